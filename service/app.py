"""BentoML entry point: ``bentoml serve service.app:ModelService``.

Each worker loads every registered model (validated manifest, verified checksums,
onnxruntime sessions, warm-up) in ``__init__``; BentoML starts answering only after
that, and ``/readyz`` stays 503 unless at least one model is ready. The worker's state
(``service.worker.Worker``) is handed to the three doors:

- the task JSON API and the Open Inference Protocol over HTTP, both answered by the
  ``service.front.Front`` ASGI middleware ahead of BentoML's own layers (ahead of its whole app
  unless its access log, tracing or request metrics are on);
- the Open Inference Protocol over gRPC (``service.doors.oip_grpc``), a server started on the
  worker's event loop by the startup hook.

BentoML provides the HTTP server, the workers, ``/livez``, ``/readyz`` and the OpenAPI page
(``/``, ``/docs.json``, from the FastAPI app in ``service/http_app.py``, which also serves
``/metrics``). Never imports torch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time

import bentoml

from . import telemetry, traffic
from .doors import oip_grpc
from .front import Front
from .guard import Guard
from .http_app import api, document_limits
from .settings import ServiceSettings
from .worker import Worker, settle_garbage_collector

log = logging.getLogger("service")

# Before any tokenizer runs: `tokenizers` would otherwise split each batch over a rayon pool whose
# spinning threads take CPU from the event loop (about 10% of 32-client throughput on 2 cores).
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
SETTINGS = ServiceSettings()
traffic.install()  # before BentoML builds the worker's app from the service below
sys.setswitchinterval(SETTINGS.gil_switch_interval_ms / 1000.0)
document_limits(SETTINGS.max_items_per_request)


def use_event_loop(name: str) -> None:
    """Make uvicorn's "auto" loop, the one BentoML's workers ask for, ``name`` (looked up when the worker's
    server starts, after this module is imported)."""
    from uvicorn import config

    config.LOOP_FACTORIES["auto"] = config.LOOP_FACTORIES[name]


use_event_loop(SETTINGS.event_loop)


def _configure_logging() -> None:
    # BentoML configures its own loggers only; without a handler our INFO lines would vanish.
    logger = logging.getLogger("service")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


@bentoml.service(
    name="modelserve",
    workers=SETTINGS.workers,
    traffic={"timeout": SETTINGS.request_timeout_s},
    logging={"access": {"enabled": SETTINGS.access_log}},
    metrics={"enabled": SETTINGS.bentoml_metrics},
    # excluded URLs skip span creation in BentoML's OpenTelemetry middleware ("/" matches every path)
    tracing={} if SETTINGS.tracing else {"excluded_urls": ["/"]},
)
@bentoml.asgi_app(api, path="/")
class ModelService:
    """Serves every model of the registry over HTTP and gRPC (see GET /models)."""

    def __init__(self) -> None:
        _configure_logging()
        t0 = time.perf_counter()
        log.info("loading models from %s (provider=%s, variant=%s, %d worker(s), %d intra-op thread(s) each)",
                 SETTINGS.registry.resolve(), SETTINGS.provider, SETTINGS.variant, SETTINGS.workers,
                 SETTINGS.intra_op_threads())
        self.guard = Guard(SETTINGS)  # before the models: a bad key file stops the worker at once
        telemetry.enable_buffering(SETTINGS.metrics_flush_s)
        self.worker = Worker.start(SETTINGS)
        self.grpc_server = None
        settle_garbage_collector(SETTINGS.gc_thresholds)
        models = self.worker.models
        ready = [n for n, e in models.items() if e.ready]
        failed = {n: e.current.reason for n, e in models.items() if not e.ready and e.current is not None}
        log.info("ready in %.2f s: %d model(s) serving %s; %d failed %s", time.perf_counter() - t0, len(ready), ready,
                 len(failed), failed or "")

    @bentoml.on_startup
    async def start_background(self) -> None:
        """On the worker's event loop: the gRPC door and the registry watch."""
        loop = asyncio.get_running_loop()
        log.info("event loop: %s.%s (SERVICE_EVENT_LOOP=%s)", type(loop).__module__, type(loop).__name__,
                 SETTINGS.event_loop)
        if SETTINGS.grpc:
            self.grpc_server = await oip_grpc.start_server(self.worker, self.guard, SETTINGS.grpc_host,
                                                           SETTINGS.grpc_port)
            self.guard.drain.on_stop(self.stop_grpc)
        self.worker.lifecycle.start()
        # after uvicorn installed its SIGTERM handler (before the app started): the drain wraps it
        self.guard.drain.install(loop)

    async def stop_grpc(self) -> None:
        """No new RPCs; running ones get the shutdown timeout (called by the drain, and at shutdown)."""
        if self.grpc_server is not None:
            await self.grpc_server.stop(grace=self.guard.drain.timeout_s)

    @bentoml.on_shutdown
    async def stop_background(self) -> None:
        await self.worker.lifecycle.stop()
        await self.stop_grpc()

    async def __is_ready__(self) -> bool:
        return self.worker.ready and not self.guard.drain.draining


def current_worker() -> Worker | None:
    """This process's worker, once BentoML has created the service instance."""
    try:
        return bentoml.get_current_service().worker
    except Exception:  # not instantiated yet (models still loading)
        return None


def current_guard() -> Guard | None:
    """This process's guard (keys, rate limits, deadlines, drain), once the service instance exists."""
    try:
        return bentoml.get_current_service().guard
    except Exception:
        return None


def bentoml_layers_per_request(settings: ServiceSettings) -> bool:
    """Whether BentoML's own middlewares must see the doors' requests: its access log, tracing spans or
    request metrics are on."""
    return settings.access_log or settings.tracing or settings.bentoml_metrics


if bentoml_layers_per_request(SETTINGS):
    # inside BentoML's middlewares (they log, trace or count every request), ahead of its request context
    # and the mount
    ModelService.add_asgi_middleware(Front, worker_of=current_worker, guard_of=current_guard)
else:
    # ahead of BentoML's whole app: the doors' requests skip Starlette's error middleware, the
    # OpenTelemetry middleware (which excludes them) and the timeout middleware (the front keeps the
    # timeout), ~12 us of the event loop per request (benchmarks/RESULTS.md); the rest passes through
    traffic.serve_outermost(ModelService, lambda app: Front(app, current_worker, current_guard,
                                                            timeout_s=SETTINGS.request_timeout_s))
