"""The service's calls into monitoring.metrics; a metrics failure is logged, never answered to a client."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from monitoring import metrics

if TYPE_CHECKING:
    from .models import ServedModel

log = logging.getLogger("service.telemetry")

# runtime feature that carries an input size -> metrics size kind
# (text classifier: token_count; translator: source_tokens, generated_tokens)
_SIZE_FEATURES = {"token_count": "tokens", "source_tokens": "tokens", "generated_tokens": "generated_tokens"}
_warned: set[str] = set()


def _guard(what: str, fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except Exception as exc:  # metrics must never break serving; say so once per kind
        if what not in _warned:
            _warned.add(what)
            log.exception("metrics call %s failed (%s); further failures of it are not logged", what, exc)


def record_model(model: "ServedModel") -> None:
    provider = model.runtime.provider if model.runtime else None
    _guard("set_model_info", metrics.set_model_info, model.name, model.version or "none", model.task or "unknown",
           provider, model.status, model.load_seconds, model.manifest if model.status == "ready" else None)


def request_started(endpoint: str) -> None:
    _guard("request_started", metrics.request_started, endpoint)


def request_finished(endpoint: str) -> None:
    _guard("request_finished", metrics.request_finished, endpoint)


def record_request(endpoint: str, status: int, seconds: float) -> None:
    _guard("observe_request", metrics.observe_request, endpoint, status, seconds)


def count_error(endpoint: str, model: str, kind: str) -> None:
    _guard("count_error", metrics.count_error, endpoint, model or "none", kind)


def record_inputs(model: "ServedModel", sizes: Mapping[str, Sequence[float]]) -> None:
    _guard("observe_inputs", metrics.observe_inputs, model.name, model.version, sizes)


def record_batch(model: "ServedModel", rows: int, timings: Mapping[str, float], queue_waits: Sequence[float],
                 results: Sequence[Mapping[str, Any]]) -> None:
    """Stage timings, rows, predicted classes, confidences and drift bins of one model call."""
    name, version = model.name, model.version
    _guard("observe_batch", metrics.observe_batch, name, version, rows,
           {k: v for k, v in timings.items() if k in metrics.STAGES}, list(queue_waits))
    _guard("count_items", metrics.count_items, name, version, rows)
    features = [r.get("features") or {} for r in results]
    sizes: dict[str, list] = {}
    for key, kind in _SIZE_FEATURES.items():
        values = [f[key] for f in features if key in f]
        if values:
            sizes.setdefault(kind, []).extend(values)
    if sizes:
        _guard("observe_inputs", metrics.observe_inputs, name, version, sizes)
    labels_per_item = None
    confidences = None
    if model.task != "translation":
        labels_per_item, confidences = [], []
        single = model.task != "multi-label-classification"
        for r, f in zip(results, features):
            labels = r.get("labels") or []
            labels_per_item.append([lab["label"] for lab in (labels[:1] if single else labels)])
            top = f.get("top_confidence", labels[0]["score"] if labels else None)
            if top is not None:
                confidences.append(float(top))
    _guard("observe_predictions", metrics.observe_predictions, name, version, model.manifest, features,
           labels_per_item, confidences)
