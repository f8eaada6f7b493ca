"""One worker process's serving state: settings, model entries, the traffic count. Passed to every door."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

from .batcher import Traffic
from .doors.oip_codec import RestHeaders
from .errors import ServiceError
from .lifecycle import Lifecycle, ModelEntry
from .models import ServedModel
from .settings import ServiceSettings
from .shadow import ShadowSender


@dataclass
class Route:
    """Where one request goes: the version, why (primary, canary or pinned), and a shadow copy's target."""

    model: ServedModel
    via: str
    request_id: str | None = None
    shadow: ServedModel | None = None


class Worker:
    """What one worker serves; doors get it as an argument, never from a module global."""

    def __init__(self, settings: ServiceSettings, models: dict[str, ModelEntry], traffic: Traffic):
        self.settings = settings
        self.models = models
        self.traffic = traffic
        self.lifecycle = Lifecycle(settings, models, traffic)
        self._background: set[asyncio.Task] = set()  # running tasks nobody awaits (shadow comparisons)
        self.shadow = ShadowSender(self, settings.shadow_wait_ms / 1000.0)
        self.rest_headers = RestHeaders()  # the OIP REST door's checked binary-extension headers

    @classmethod
    def start(cls, settings: ServiceSettings) -> "Worker":
        """A worker with every model loaded (blocking)."""
        worker = cls(settings, {}, Traffic())
        worker.lifecycle.load_initial()
        return worker

    def background(self, coro: Coroutine) -> None:
        """Run ``coro`` on the worker's event loop without anyone waiting for it (kept referenced until done)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @property
    def ready(self) -> bool:
        return any(e.ready for e in self.models.values())

    def route(self, name: str, version: str | None = None, request_id: str | None = None) -> Route:
        """The ready version a request for ``name`` gets: 404 unknown model or version, 503 failed to load."""
        entry = self.models.get(name)
        if entry is None or entry.unloaded:
            known = sorted(n for n, e in self.models.items() if not e.unloaded)
            why = f"model {name!r} is unloaded" if entry is not None else f"unknown model {name!r}"
            raise ServiceError(404, why, field="model", limit=known, known_models=known)
        if version:
            model = entry.versions.get(version)
            if model is None:
                raise ServiceError(404, f"model {name!r} has no version {version!r} loaded", field="version",
                                   limit=sorted(entry.versions))
            via = "primary" if version == entry.primary else "pinned"
        else:
            model, via = entry.pick(request_id)
        if model is None or model.status != "ready":
            reason = model.reason if model is not None else "no version loaded"
            raise ServiceError(503, f"model {name!r} failed to load: {reason}", field="model", limit=None,
                               kind="model_failure", reason=reason)
        return Route(model, via, request_id, entry.shadow_of(model, via, request_id))

    def model(self, name: str, version: str | None = None) -> ServedModel:
        return self.route(name, version).model

    def route_for(self, name: str, tasks: Iterable[str], endpoint: str, version: str | None = None,
                  request_id: str | None = None) -> Route:
        """``route`` for an endpoint that serves ``tasks``: also 422 for a model of another task."""
        route = self.route(name, version, request_id)
        tasks = tuple(tasks)
        if route.model.task not in tasks:
            raise ServiceError(422, f"model {name!r} is a {route.model.task} model, and {endpoint} serves "
                               f"{', '.join(tasks)}", field="model", limit=list(tasks))
        return route

    def check_count(self, n: int, field: str) -> None:
        limit = self.settings.max_items_per_request
        if n > limit:
            raise ServiceError(413, f"{n} {field} in one request, limit {limit}", field=field, limit=limit)
        if n == 0:
            raise ServiceError(422, f"{field} is empty; send at least one", field=field, limit=1)

    def limits(self, model: ServedModel) -> dict[str, Any]:
        """Input limits the service enforces for ``model`` (shown by GET /models)."""
        mf = model.manifest
        limits: dict[str, Any] = {"max_items_per_request": self.settings.max_items_per_request}
        prep = mf.preprocessing
        if prep.kind in ("text", "translation"):
            limits["max_text_chars"] = prep.max_text_chars
        if prep.kind == "image":
            limits.update(max_bytes=prep.max_bytes, max_pixels=prep.max_pixels)
        if mf.generation is not None:
            limits.update(max_num_beams=mf.generation.max_num_beams,
                          max_max_new_tokens=mf.generation.max_max_new_tokens)
        return limits


def settle_garbage_collector(thresholds: tuple[int, int, int]) -> None:
    """Move everything loaded so far out of the collector's sight, and collect less often.

    A full collection walks every tracked object (BentoML, FastAPI, pydantic, the runtimes):
    here 70-100 ms with every request waiting, every few seconds under load, which made the
    32-client p99 about 10x the p50. Frozen objects are never traversed again.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
