"""Loading model versions into servable objects; a bad version is kept as ``failed`` with its reason."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelkit.manifest import Manifest
from modelkit.registry import RegistryError, latest_version, load_version
from modelkit.runtimes import Runtime, create_runtime

from . import telemetry
from .batcher import Batcher, Traffic
from .errors import public_text
from .settings import ServiceSettings
from .tasks import TaskSpec, spec_for

log = logging.getLogger("service.models")


@dataclass(eq=False)
class ServedModel:
    """One loaded model version: its runtime and batcher, or why it failed to load."""

    name: str
    version: str | None
    status: str  # "ready" | "failed" | "unloaded"
    reason: str | None = None
    manifest: Manifest | None = None
    runtime: Runtime | None = None
    spec: TaskSpec | None = None  # the task's spec (service/tasks), set when ready
    batcher: Batcher | None = None
    load_seconds: float | None = None
    in_flight: int = 0  # requests that resolved this version and have not been answered yet
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

    @property
    def idle(self) -> bool:
        return self.in_flight == 0 and (self.batcher is None or self.batcher.idle)

    async def retire(self, timeout_s: float, poll_s: float = 0.01) -> bool:
        """Wait (up to ``timeout_s``) until its queued and in-flight requests are answered, then free it.

        Returns whether it drained in time; it is freed either way (late requests get the error
        their batcher gives them).
        """
        deadline = time.monotonic() + timeout_s
        while not self.idle and time.monotonic() < deadline:
            await asyncio.sleep(poll_s)
        drained = self.idle
        if self.batcher is not None:
            await self.batcher.close()
        self.batcher, self.runtime = None, None  # drop the onnxruntime sessions
        release_memory()
        self.status = "unloaded"
        telemetry.record_model(self)
        log.info("model %s version %s unloaded (%s)", self.name, self.version,
                 "drained" if drained else f"still busy after {timeout_s:.0f} s")
        return drained


def release_memory() -> None:
    """Collect the freed version's objects and hand free heap pages back to the system.

    glibc keeps freed memory in its heaps; without ``malloc_trim`` a worker's resident size stays at
    its two-versions peak after the old version is freed."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _one_line(exc: BaseException, root: Path) -> str:
    """The exception as one line, without the server's paths (the registry root is shown as ``<registry>``)."""
    text = " ".join(str(exc).split())
    for prefix in {str(root.resolve()), str(root)}:
        if prefix and prefix != ".":
            text = text.replace(prefix, "<registry>")
    return f"{type(exc).__name__}: {text}"[:600]


def wanted_version(settings: ServiceSettings, name: str) -> str | None:
    """The version ``name`` should serve by default: its pin, else the registry's LATEST (None if absent)."""
    if name in settings.pins:
        return settings.pins[name]
    try:
        return latest_version(settings.registry, name)
    except Exception:
        return None


def load_model(settings: ServiceSettings, name: str, version: str | None, traffic: Traffic) -> ServedModel:
    """Load and warm up one version (blocking: call it off the event loop once serving); never raises."""
    root = settings.registry
    session_settings = settings.session_settings()
    t0 = time.perf_counter()
    manifest = None
    try:
        if version is None:
            version = latest_version(root, name)
        manifest, vdir = load_version(root, name, version)
        if not manifest.gate.passed:
            raise RegistryError(f"{name}/{version} failed its quality gate, so it is never served: "
                                + "; ".join(manifest.gate.reasons))
        runtime = create_runtime(manifest, vdir, session_settings)
        runtime.load()
        if settings.warmup:
            runtime.warmup()
    except Exception as exc:  # any bad file or manifest: this version fails, the others serve
        reason = public_text(_one_line(exc, root))  # no server paths, inside the registry or not
        log.error("model %s (version %s) FAILED to load: %s", name, version, reason)
        model = ServedModel(name=name, version=version, status="failed", reason=reason, manifest=manifest,
                            load_seconds=time.perf_counter() - t0)
        telemetry.record_model(model)
        return model
    batch = settings.batch_for(name)
    model = ServedModel(name=name, version=manifest.version, status="ready", manifest=manifest, runtime=runtime,
                        spec=spec_for(manifest.task), load_seconds=time.perf_counter() - t0)
    model.batcher = Batcher(f"{name}@{manifest.version}", model.predict_batch, batch, traffic)
    log.info(
        "model %s version %s (%s) loaded from %s on %s, variant %s, %d intra-op threads, batch <= %d, wait <= %.1f ms,"
        " in %.2f s",
        name, manifest.version, manifest.task, vdir, runtime.provider, runtime.variant,
        session_settings.intra_op_threads, batch.max_batch_size, batch.max_wait_ms, model.load_seconds,
    )
    telemetry.record_model(model)
    return model
