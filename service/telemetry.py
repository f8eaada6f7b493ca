"""The service's calls into monitoring.metrics; a metrics failure is logged, never answered to a client."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from monitoring import metrics

if TYPE_CHECKING:
    from .models import ServedModel

log = logging.getLogger("service.telemetry")

_warned: set[str] = set()


def _guard(what: str, fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except Exception as exc:  # metrics must never break serving; say so once per kind
        if what not in _warned:
            _warned.add(what)
            log.exception("metrics call %s failed (%s); further failures of it are not logged", what, exc)


def call(fn, *args) -> None:
    """``fn(*args)``, where a metrics failure is logged (once per function), never raised."""
    _guard(getattr(fn, "__qualname__", "metrics"), fn, *args)


def record_model(model: "ServedModel") -> None:
    provider = model.runtime.provider if model.runtime else None
    _guard("set_model_info", metrics.set_model_info, model.name, model.version or "none", model.task or "unknown",
           provider, model.status, model.load_seconds, model.manifest if model.status == "ready" else None)


def request_started(protocol: str, endpoint: str) -> None:
    _guard("request_started", metrics.request_started, endpoint, protocol)


def request_finished(protocol: str, endpoint: str) -> None:
    _guard("request_finished", metrics.request_finished, endpoint, protocol)


def record_request(protocol: str, endpoint: str, status: int | str, seconds: float) -> None:
    _guard("observe_request", metrics.observe_request, endpoint, status, seconds, protocol)


def count_error(protocol: str, endpoint: str, model: str | None, kind: str) -> None:
    _guard("count_error", metrics.count_error, endpoint, model or "none", kind, protocol)


def record_batch(model: "ServedModel", rows: int, timings: Mapping[str, float], queue_waits: Sequence[float],
                 results: Sequence[Mapping[str, Any]]) -> None:
    """Stage timings, rows, input sizes, predicted classes, confidences and drift bins of one model call."""
    name, version, spec = model.name, model.version, model.spec
    _guard("observe_batch", metrics.observe_batch, name, version, rows,
           {k: v for k, v in timings.items() if k in metrics.STAGES}, list(queue_waits))
    _guard("count_items", metrics.count_items, name, version, rows)
    features = [r.get("features") or {} for r in results]
    sizes = {kind: [f[key] for f in features if key in f] for key, kind in spec.size_features.items()}
    if any(sizes.values()):
        _guard("observe_inputs", metrics.observe_inputs, name, version, {k: v for k, v in sizes.items() if v})
    labels_per_item = [spec.predicted_labels(r) for r in results]
    if all(labels is None for labels in labels_per_item):
        labels_per_item, confidences = None, None
    else:
        confidences = [float(f["top_confidence"]) for f in features if f.get("top_confidence") is not None]
    _guard("observe_predictions", metrics.observe_predictions, name, version, model.manifest, features,
           labels_per_item, confidences)


def record_version_request(model: "ServedModel", route: str, status: int, seconds: float) -> None:
    """One request answered by one model version (route: primary, canary, pinned or shadow)."""
    _guard("observe_version_request", metrics.observe_version_request, model.name, model.version, route, status,
           seconds)


def record_shadow(primary: "ServedModel", candidate: "ServedModel", agree: int, disagree: int) -> None:
    _guard("count_shadow", metrics.count_shadow, primary.name, primary.version, candidate.version, agree, disagree)


def record_shadow_skipped(primary: "ServedModel", candidate: "ServedModel", items: int) -> None:
    _guard("count_shadow_skipped", metrics.count_shadow_skipped, primary.name, candidate.version, items)


def record_rollout(name: str, primary: str | None, candidate: str | None, mode: str | None, share: float) -> None:
    _guard("set_rollout", metrics.set_rollout, name, primary, candidate, mode, share)


def enable_buffering(interval_s: float) -> None:
    """Buffer metric writes (monitoring.metrics); 0 keeps writing every observation at once."""
    if interval_s > 0:
        metrics.enable_buffering(interval_s)


def flush() -> None:
    """Write this process's buffered metrics now (before a scrape)."""
    _guard("flush", metrics.default_metrics().flush)


class _Unrecorded:
    """Stands in for a request's series when the metrics could not give one (never fails a request)."""

    def start(self) -> None:
        pass

    def done(self, status: int, seconds: float) -> None:
        pass


def request_series(protocol: str, endpoint: str):
    """The series a request of ``endpoint`` on ``protocol`` records (``start()``, ``done(status, seconds)``)."""
    try:
        return metrics.default_metrics().request_series(endpoint, protocol)
    except Exception as exc:  # same rule as _guard: metrics never break serving
        _guard("request_series", _raise, exc)
        return _Unrecorded()


def _raise(exc: Exception) -> None:
    raise exc
