"""The HTTP API (FastAPI, mounted into the BentoML service): models, classify, translate, classify_image."""

from __future__ import annotations

import base64
import binascii
import json
import logging
from typing import Any, TypeVar

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from modelkit.runtimes import InputError
from monitoring import metrics

from . import telemetry
from .asgi import InferenceRoutes, RequestGuard, endpoint_label
from .batcher import Overloaded, Traffic
from .errors import ApiError, api_error_handler, http_error_handler, validation_error_handler
from .models import ENDPOINT_TASKS, ServedModel
from .schemas import (
    ERROR_RESPONSES,
    ClassifyRequest,
    ClassifyResponse,
    ImageJsonRequest,
    ModelInfo,
    ModelsResponse,
    TranslateRequest,
    TranslateResponse,
)
from .settings import ServiceSettings

log = logging.getLogger("service.routes")
BodyT = TypeVar("BodyT", bound=BaseModel)

DEFAULT_TOP_K = 1
IMAGE_FILE_FIELDS = ("images", "image", "file", "files")
OFFLOAD_VALIDATION_BYTES = 256 * 1024  # decode big uploads in a thread, not on the event loop


class ServiceState:
    """What one worker serves: settings, loaded models and the traffic counter the batchers share."""

    def __init__(self, settings: ServiceSettings, models: dict[str, ServedModel], traffic: Traffic):
        self.settings = settings
        self.models = models
        self.traffic = traffic

    @property
    def ready(self) -> bool:
        return any(m.status == "ready" for m in self.models.values())

    def model_for(self, endpoint: str, name: str) -> ServedModel:
        """The ready model ``name`` for ``endpoint``: 404 unknown, 503 failed, 422 wrong task."""
        model = self.models.get(name)
        if model is None:
            raise ApiError(404, f"unknown model {name!r}", field="model", limit=sorted(self.models),
                           known_models=sorted(self.models))
        if model.status != "ready":
            raise ApiError(503, f"model {name!r} failed to load: {model.reason}", field="model", limit=None,
                           reason=model.reason)
        tasks = ENDPOINT_TASKS[endpoint]
        if model.task not in tasks:
            raise ApiError(422, f"model {name!r} is a {model.task} model, and /{endpoint} serves {', '.join(tasks)}",
                           field="model", limit=list(tasks))
        return model


_state: ServiceState | None = None
_traffic = Traffic()


def traffic() -> Traffic:
    return _traffic


def set_state(state: ServiceState) -> None:
    global _state
    _state = state


def state() -> ServiceState:
    if _state is None:
        raise ApiError(503, "service is still loading models", field=None)
    return _state


# ---- app and middleware ----------------------------------------------------------------------

class ServiceAPI(FastAPI):
    """The FastAPI app, every request of which passes through a RequestGuard.

    The inference endpoints are also reached without FastAPI: see ``inference_routes`` and
    service/asgi.py. Both paths run the same handler functions and error handlers.
    """

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._guarded = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] == "/metrics":  # scrapes are not client traffic
            return await super().__call__(scope, receive, send)
        if self._guarded is None:
            self._guarded = guard(super().__call__)
        await self._guarded(scope, receive, send)


def _max_request_bytes() -> int | None:
    return _state.settings.max_request_bytes if _state else None


def guard(app) -> RequestGuard:
    """``app`` behind the request guard (limits from the loaded settings, the shared traffic count)."""
    return RequestGuard(app, _traffic, _max_request_bytes)


api = ServiceAPI(
    title="modelserve",
    version="1.0",
    description="Serves every model in the registry (exported/) with onnxruntime; see GET /models.",
    docs_url=None,  # BentoML serves the Swagger page at / from the merged spec (/docs.json)
    redoc_url=None,
)


def _error_kind(status: int, message: str) -> str:
    if status == 404:
        return "not_found"
    if status == 503:
        return "model_failure" if "failed to load" in message else "overload"
    return "model_failure" if status >= 500 else "validation"


def _counted(handler):
    async def wrapped(request: Request, exc: Exception):
        response = await handler(request, exc)
        telemetry.count_error(endpoint_label(request.url.path), model_name_of(request),
                              _error_kind(response.status_code, str(exc)))
        return response

    return wrapped


_on_api_error = _counted(api_error_handler)
_on_validation_error = _counted(validation_error_handler)
api.add_exception_handler(ApiError, _on_api_error)
api.add_exception_handler(RequestValidationError, _on_validation_error)
api.add_exception_handler(StarletteHTTPException, _counted(http_error_handler))


# ---- helpers ---------------------------------------------------------------------------------


def _check_count(n: int, field: str) -> None:
    limit = state().settings.max_items_per_request
    if n > limit:
        raise ApiError(413, f"{n} {field} in one request, limit {limit}", field=field, limit=limit)
    if n == 0:
        raise ApiError(422, f"{field} is empty; send at least one", field=field, limit=1)


def _item_field(prefix: str, index: int, exc: InputError) -> str:
    base = f"{prefix}[{index}]"
    generic = {None, "", "text", "texts", "image", "images", "item", "source"}
    return base if exc.field in generic else f"{base}.{exc.field}"


def _validate_all(model: ServedModel, items: list[Any], prefix: str) -> list[Any]:
    out = []
    for i, item in enumerate(items):
        try:
            out.append(model.runtime.validate(item))
        except InputError as exc:
            raise ApiError(exc.status, str(exc), field=_item_field(prefix, i, exc), limit=_limit(exc.limit)) from None
    return out


def _limit(value: Any) -> Any:
    return value if value is None or isinstance(value, (int, float, str, bool, list)) else str(value)


async def _predict(model: ServedModel, items: list[Any], options: dict[str, Any]) -> list[dict]:
    try:
        return await model.batcher.submit(items, options)
    except Overloaded as exc:
        raise ApiError(503, str(exc), field=None, limit=model.batcher.max_queue_items) from None
    except InputError as exc:  # a runtime refusing an option at predict time (e.g. top_k)
        raise ApiError(exc.status, str(exc), field=exc.field, limit=_limit(exc.limit)) from None
    except Exception as exc:
        log.exception("model %s failed on a batch of %d items", model.name, len(items))
        raise ApiError(500, f"model {model.name} failed: {type(exc).__name__}: {exc}", field=None) from None


def _top_k(model: ServedModel, top_k: int | None) -> int:
    n = len(model.manifest.labels)
    k = DEFAULT_TOP_K if top_k is None else top_k
    if not 1 <= k <= n:
        raise ApiError(422, f"top_k must be from 1 to {n} for model {model.name}, got {k}", field="top_k", limit=n)
    return k


def _classifications(model: ServedModel, results: list[dict], k: int) -> list[dict]:
    """Response entries (shape of schemas.Classification): every chosen label, or the top k."""
    multi = model.task == "multi-label-classification"
    return [{"labels": r["labels"] if multi else r["labels"][:k]} for r in results]


def _mark(request: Request, model: str) -> None:
    request.state.model = model


# ---- endpoints -------------------------------------------------------------------------------


@api.get("/models", response_model=ModelsResponse, summary="Every registered model: status, task, labels, metrics")
async def list_models() -> ModelsResponse:
    infos = []
    for m in state().models.values():
        mf = m.manifest
        info = ModelInfo(name=m.name, version=m.version, task=m.task, status=m.status, reason=m.reason,
                         source=m.source, load_seconds=m.load_seconds)
        if mf is not None:
            info.labels = list(mf.labels)
            info.metrics = mf.metrics
            info.headline_metric = mf.headline_metric
            info.limits = _limits(m)
        if m.runtime is not None:
            info.provider = m.runtime.provider
            info.variant = m.runtime.variant
        if m.batcher is not None:
            info.max_batch_size = m.batcher.max_batch_size
            info.max_wait_ms = m.batcher.max_wait_s * 1000
        infos.append(info)
    return ModelsResponse(models=infos)


@api.get("/metrics", include_in_schema=False)
async def prometheus_metrics() -> Response:
    """Prometheus exposition of every worker's metrics (BentoML's own route replaces this one
    when SERVICE_BENTOML_METRICS is on)."""
    body, content_type = await anyio.to_thread.run_sync(metrics.exposition)
    return Response(body, media_type=content_type)


def _limits(m: ServedModel) -> dict[str, Any]:
    mf = m.manifest
    limits: dict[str, Any] = {"max_items_per_request": state().settings.max_items_per_request}
    prep = mf.preprocessing
    if prep.kind in ("text", "translation"):
        limits["max_text_chars"] = prep.max_text_chars
    if prep.kind == "image":
        limits.update(max_bytes=prep.max_bytes, max_pixels=prep.max_pixels)
    if mf.generation is not None:
        limits.update(max_num_beams=mf.generation.max_num_beams, max_max_new_tokens=mf.generation.max_max_new_tokens)
    return limits


def _json_body(model_cls: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI requestBody for a pydantic model (the handlers parse bodies themselves, see _parse)."""
    schema = model_cls.model_json_schema()
    examples = schema.get("examples") or []
    content: dict[str, Any] = {"schema": schema}
    if examples:
        content["example"] = examples[0]
    return {"required": True, "content": {"application/json": content}}


async def _parse(request: Request, model_cls: type[BodyT]) -> BodyT:
    """Validate the JSON body with pydantic-core directly (cheaper than FastAPI's body handling)."""
    try:
        return model_cls.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None


def _json(payload: dict) -> Response:
    return Response(json.dumps(payload, separators=(",", ":")), media_type="application/json")


@api.post("/classify", response_model=ClassifyResponse, responses=ERROR_RESPONSES,
          openapi_extra={"requestBody": _json_body(ClassifyRequest)},
          summary="Classify texts (single-label: top-k labels; multi-label: labels above threshold)")
async def classify(request: Request) -> Response:
    body = await _parse(request, ClassifyRequest)
    _mark(request, body.model)
    model = state().model_for("classify", body.model)
    _check_count(len(body.texts), "texts")
    options: dict[str, Any] = {}
    k = 0
    if model.task != "multi-label-classification":
        k = _top_k(model, body.top_k)
        options["top_k"] = len(model.manifest.labels)  # same options for every request: they share batches
    items = _validate_all(model, body.texts, "texts")
    results = await _predict(model, items, options)
    return _json({"model": model.name, "version": model.version, "results": _classifications(model, results, k)})


@api.post("/translate", response_model=TranslateResponse, responses=ERROR_RESPONSES,
          openapi_extra={"requestBody": _json_body(TranslateRequest)}, summary="Translate texts")
async def translate(request: Request) -> Response:
    body = await _parse(request, TranslateRequest)
    _mark(request, body.model)
    model = state().model_for("translate", body.model)
    _check_count(len(body.texts), "texts")
    gen = model.manifest.generation
    num_beams = gen.num_beams if body.num_beams is None else body.num_beams
    max_new = gen.max_new_tokens if body.max_new_tokens is None else body.max_new_tokens
    if not 1 <= num_beams <= gen.max_num_beams:
        raise ApiError(422, f"num_beams must be from 1 to {gen.max_num_beams}, got {num_beams}",
                       field="num_beams", limit=gen.max_num_beams)
    if not 1 <= max_new <= gen.max_max_new_tokens:
        raise ApiError(422, f"max_new_tokens must be from 1 to {gen.max_max_new_tokens}, got {max_new}",
                       field="max_new_tokens", limit=gen.max_max_new_tokens)
    items = _validate_all(model, body.texts, "texts")
    results = await _predict(model, items, {"num_beams": num_beams, "max_new_tokens": max_new})
    return _json({"model": model.name, "version": model.version,
                  "results": [{"translation": r["translation"]} for r in results]})


_IMAGE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["model", "images"],
                "properties": {
                    "model": {"type": "string", "example": "fashion"},
                    "images": {"type": "array", "items": {"type": "string", "format": "binary"},
                               "description": "one or more image files (fields images, image, file or files)"},
                    "top_k": {"type": "integer", "minimum": 1, "example": 3},
                },
            }
        },
        "application/json": {
            "schema": ImageJsonRequest.model_json_schema(),
            "example": {"model": "fashion", "images": ["iVBORw0KGgoAAAANSUhEUgAA..."], "top_k": 3},
        },
    },
}


@api.post("/classify_image", response_model=ClassifyResponse, responses=ERROR_RESPONSES,
          openapi_extra={"requestBody": _IMAGE_BODY},
          summary="Classify images: multipart upload or JSON with base64 images")
async def classify_image(request: Request) -> Response:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        name, top_k, blobs = await _read_multipart(request)
    else:
        name, top_k, blobs = await _read_image_json(request)
    _mark(request, name)
    model = state().model_for("classify_image", name)
    _check_count(len(blobs), "images")
    k = _top_k(model, top_k)
    total = sum(len(b) for b in blobs)
    if total > OFFLOAD_VALIDATION_BYTES:
        items = await anyio.to_thread.run_sync(_validate_all, model, blobs, "images")
    else:
        items = _validate_all(model, blobs, "images")
    results = await _predict(model, items, {"top_k": len(model.manifest.labels)})
    return _json({"model": model.name, "version": model.version, "results": _classifications(model, results, k)})


async def _read_image_json(request: Request) -> tuple[str, int | None, list[bytes]]:
    body = await _parse(request, ImageJsonRequest)
    blobs = []
    for i, text in enumerate(body.images):
        try:
            blobs.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise ApiError(422, f"images[{i}] is not valid base64: {exc}", field=f"images[{i}]",
                           limit="base64 (RFC 4648)") from None
    return body.model, body.top_k, blobs


async def _read_multipart(request: Request) -> tuple[str, int | None, list[bytes]]:
    limit = state().settings.max_items_per_request
    try:
        form = await request.form(max_files=limit + 1, max_fields=16)
    except Exception as exc:  # malformed multipart, too many parts
        if "too many files" in str(exc).lower():
            raise ApiError(413, f"more than {limit} images in one request", field="images", limit=limit) from None
        raise ApiError(422, f"could not read the multipart body: {exc}", field="body") from None
    name = form.get("model")
    if not isinstance(name, str) or not name:
        raise ApiError(422, "form field 'model' is required", field="model")
    top_raw = form.get("top_k")
    top_k = None
    if top_raw is not None:
        try:
            top_k = int(str(top_raw))
        except ValueError:
            raise ApiError(422, f"top_k must be an integer, got {str(top_raw)[:20]!r}", field="top_k") from None
    files = [f for key in IMAGE_FILE_FIELDS for f in form.getlist(key)]
    if not files:
        raise ApiError(422, f"no image file in the form (fields {', '.join(IMAGE_FILE_FIELDS)})", field="images",
                       limit=1)
    if len(files) > limit:
        raise ApiError(413, f"{len(files)} images in one request, limit {limit}", field="images", limit=limit)
    blobs = []
    for i, f in enumerate(files):
        if not isinstance(f, UploadFile):
            raise ApiError(422, f"images[{i}] is a text field, expected a file upload", field=f"images[{i}]")
        ctype = (f.content_type or "").lower()
        if ctype and not (ctype.startswith("image/") or ctype == "application/octet-stream"):
            raise ApiError(415, f"images[{i}] has content type {ctype!r}, expected image/*", field=f"images[{i}]",
                           limit="image/*")
        blobs.append(await f.read())
    await form.close()
    return name, top_k, blobs


def model_name_of(request: Request) -> str:
    return getattr(request.state, "model", None) or "none"


def inference_routes() -> tuple[type[InferenceRoutes], dict[str, Any]]:
    """The fast-path middleware and its options, for ``Service.add_asgi_middleware``."""
    routes = {"/classify": classify, "/translate": translate, "/classify_image": classify_image}
    return InferenceRoutes, {"routes": routes, "guard": guard, "on_api_error": _on_api_error,
                             "on_validation_error": _on_validation_error}

__all__ = ["api", "ServiceState", "set_state", "state", "traffic", "JSONResponse"]
