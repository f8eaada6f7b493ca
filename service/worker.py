"""One worker process's serving state: settings, loaded models, the traffic count. Passed to every door."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .batcher import Traffic
from .errors import OVERLOAD, ServiceError
from .models import ServedModel
from .settings import ServiceSettings


class Worker:
    """What one worker serves; doors get it as an argument, never from a module global."""

    def __init__(self, settings: ServiceSettings, models: dict[str, ServedModel], traffic: Traffic):
        self.settings = settings
        self.models = models
        self.traffic = traffic

    @property
    def ready(self) -> bool:
        return any(m.status == "ready" for m in self.models.values())

    def model(self, name: str, version: str | None = None) -> ServedModel:
        """The ready model ``name`` (at ``version`` when given): 404 unknown, 503 failed to load."""
        model = self.models.get(name)
        if model is None:
            raise ServiceError(404, f"unknown model {name!r}", field="model", limit=sorted(self.models),
                               known_models=sorted(self.models))
        if version and version != model.version:
            raise ServiceError(404, f"model {name!r} has no version {version!r} served (serving {model.version})",
                               field="version", limit=[model.version])
        if model.status != "ready":
            raise ServiceError(503, f"model {name!r} failed to load: {model.reason}", field="model", limit=None,
                               kind="model_failure", reason=model.reason)
        return model

    def model_for(self, name: str, tasks: Iterable[str], endpoint: str, version: str | None = None) -> ServedModel:
        """``model`` for an endpoint that serves ``tasks``: also 422 for a model of another task."""
        model = self.model(name, version)
        tasks = tuple(tasks)
        if model.task not in tasks:
            raise ServiceError(422, f"model {name!r} is a {model.task} model, and {endpoint} serves {', '.join(tasks)}",
                               field="model", limit=list(tasks))
        return model

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

    def overloaded(self, model: ServedModel, message: str) -> ServiceError:
        return ServiceError(503, message, field=None, limit=model.batcher.max_queue_items, kind=OVERLOAD)
