"""Loading the registry into servable models; a bad model is kept as ``failed`` with its reason."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from modelkit.manifest import Manifest
from modelkit.registry import latest_version, load_version, model_names
from modelkit.runtimes import Runtime, create_runtime

from . import telemetry
from .batcher import Batcher, Traffic
from .errors import public_text
from .settings import ServiceSettings
from .tasks import TaskSpec, spec_for

log = logging.getLogger("service.models")


@dataclass
class ServedModel:
    """One registry name: its loaded runtime and batcher, or why it failed."""

    name: str
    version: str | None
    status: str  # "ready" | "failed"
    reason: str | None = None
    manifest: Manifest | None = None
    runtime: Runtime | None = None
    spec: TaskSpec | None = None  # the task's spec (service/tasks), set when ready
    batcher: Batcher | None = None
    source: str | None = None
    load_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str | None:
        return self.manifest.task if self.manifest else None

    def predict_batch(self, items: list[Any], options: dict[str, Any], queue_waits: list[float]) -> list[dict]:
        """One model call (in the model's thread); its stage timings and drift features are recorded
        by the event loop, which has CPU to spare while this thread is what bounds throughput."""
        results = self.runtime.predict(items, **options)
        timings = dict(self.runtime.last_timings)
        loop = self.batcher.loop if self.batcher is not None else None
        if loop is None or loop.is_closed():
            telemetry.record_batch(self, len(items), timings, queue_waits, results)
        else:  # runs before the loop hands these results to their requests (both are queued FIFO)
            loop.call_soon_threadsafe(telemetry.record_batch, self, len(items), timings, list(queue_waits), results)
        return results


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:600]


def load_all(settings: ServiceSettings, traffic: Traffic | None = None) -> dict[str, ServedModel]:
    """Every model to serve, loaded and warmed up, or failed with its reason."""
    root = settings.registry
    names = settings.models if settings.models is not None else sorted(set(model_names(root)) | set(settings.pins))
    session_settings = settings.session_settings()
    traffic = traffic or Traffic()
    served: dict[str, ServedModel] = {}
    if not names:
        log.warning("no models found under %s (no <name>/LATEST)", root.resolve())
    for name in names:
        served[name] = load_one(settings, name, session_settings, traffic)
    return served


def load_one(settings: ServiceSettings, name: str, session_settings, traffic: Traffic) -> ServedModel:
    root = settings.registry
    version = settings.pins.get(name) or latest_version(root, name)
    t0 = time.perf_counter()
    manifest = None
    try:
        manifest, vdir = load_version(root, name, version)
        runtime = create_runtime(manifest, vdir, session_settings)
        runtime.load()
        if settings.warmup:
            runtime.warmup()
    except Exception as exc:  # any bad file or manifest: this model fails, the others serve
        log.error("model %s (version %s) FAILED to load: %s", name, version, _one_line(exc))
        reason = public_text(_one_line(exc), root)  # clients see no server paths
        model = ServedModel(name=name, version=version, status="failed", reason=reason, manifest=manifest,
                            source=str(root / name / (version or "?")), load_seconds=time.perf_counter() - t0)
        telemetry.record_model(model)
        return model
    batch = settings.batch_for(name)
    model = ServedModel(name=name, version=manifest.version, status="ready", manifest=manifest, runtime=runtime,
                        spec=spec_for(manifest.task), source=str(vdir.resolve()),
                        load_seconds=time.perf_counter() - t0)
    model.batcher = Batcher(name, model.predict_batch, batch, traffic)
    log.info(
        "model %s version %s (%s) loaded from %s on %s, variant %s, %d intra-op threads, batch <= %d, wait <= %.1f ms,"
        " in %.2f s",
        name, manifest.version, manifest.task, model.source, runtime.provider, runtime.variant,
        session_settings.intra_op_threads, batch.max_batch_size, batch.max_wait_ms, model.load_seconds,
    )
    telemetry.record_model(model)
    return model
