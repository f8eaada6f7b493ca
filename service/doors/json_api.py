"""The task JSON API: ``GET /models``, ``POST /classify``, ``/translate``, ``/classify_image``.

Bodies are parsed with pydantic-core straight from the bytes (``service/schemas.py``); options and
their bounds come from the model's task spec, the rest from ``service.dataplane``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response

from .. import auth, dataplane, streaming
from ..errors import ServiceError
from ..schemas import ClassifyRequest, ImageJsonRequest, ModelInfo, TranslateRequest
from ..tasks import endpoint_tasks
from ..worker import Worker
from .responses import json_response

BodyT = TypeVar("BodyT", bound=BaseModel)
IMAGE_FILE_FIELDS = ("images", "image", "file", "files")
ENDPOINT_TASKS = endpoint_tasks()
PROTOCOL = "json"
REQUEST_ID_HEADER = "x-request-id"  # canary routing hashes it: a retry with the same id gets the same version



def error_response(err: ServiceError) -> Response:
    return json_response(err.body(), err.status, err.http_headers())


def validation_error(exc: ValidationError) -> ServiceError:
    """Pydantic body errors -> 422 naming the first bad field and its limit."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    field = ".".join(str(p) for p in first.get("loc", ())) or "body"
    if first.get("type") == "json_invalid":
        field = "body"
    ctx = first.get("ctx") or {}
    limit = next((ctx[k] for k in ("le", "ge", "lt", "gt", "max_length", "min_length", "expected") if k in ctx), None)
    return ServiceError(422, first.get("msg", "invalid request"), field=field, limit=limit,
                        errors=[{"field": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg")}
                                for e in errors[:10]])


async def parse(request: Request, model_cls: type[BodyT]) -> BodyT:
    """Validate the JSON body with pydantic-core directly (cheaper than FastAPI's body handling)."""
    try:
        return model_cls.model_validate_json(await request.body())
    except ValidationError as exc:
        raise validation_error(exc) from None


async def _run(worker: Worker, request: Request, endpoint: str, name: str, items: list, body: Any) -> Response:
    request.model_name = name
    route = worker.route_for(name, ENDPOINT_TASKS[endpoint], endpoint, version=body.version,
                             request_id=auth.http_headers(request.scope).get(REQUEST_ID_HEADER))
    model = route.model
    spec = model.spec
    given = {o.name: getattr(body, o.name, None) for o in spec.options}
    results, options = await dataplane.infer(worker, route, items, given, field=spec.items_field)
    return json_response({"model": model.name, "version": model.version,
                          "results": [spec.json_result(r, options) for r in results]})


async def classify(worker: Worker, request: Request) -> Response:
    body = await parse(request, ClassifyRequest)
    return await _run(worker, request, "/classify", body.model, body.texts, body)


async def translate(worker: Worker, request: Request) -> Response:
    body = await parse(request, TranslateRequest)
    if body.stream:
        return await _translate_stream(worker, request, body)
    # a client that goes away takes its texts out of the decoding queue and batch (service/streaming.py)
    return await streaming.unless_disconnected(request, _run(worker, request, "/translate", body.model, body.texts,
                                                             body))


async def _translate_stream(worker: Worker, request: Request, body: TranslateRequest) -> Response:
    """Server-sent events: ``piece`` per new piece of an item's text, then ``result`` (or ``error``)."""
    request.model_name = body.model
    route = worker.route_for(body.model, ENDPOINT_TASKS["/translate"], "/translate", version=body.version,
                             request_id=auth.http_headers(request.scope).get(REQUEST_ID_HEADER))
    model, spec = route.model, route.model.spec
    given = {o.name: getattr(body, o.name, None) for o in spec.options}
    events, options = await streaming.open_translation(worker, route, body.texts, given, field=spec.items_field)
    head = {"model": model.name, "version": model.version}
    return streaming.event_stream(streaming.render(
        events,
        piece=lambda i, text: streaming.sse({"index": i, "text": text}, "piece"),
        done=lambda results: streaming.sse({**head, "results": [spec.json_result(r, options) for r in results]},
                                           "result"),
        error=lambda err: streaming.sse(err.body(), "error"),
    ))


async def classify_image(worker: Worker, request: Request) -> Response:
    ctype = auth.http_headers(request.scope).get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        body = await _read_multipart(worker, request)
    else:
        body = await parse(request, ImageJsonRequest)
    return await _run(worker, request, "/classify_image", body.model, _image_blobs(body.images), body)


def _image_blobs(images: list) -> list[bytes]:
    blobs = []
    for i, item in enumerate(images):
        if isinstance(item, bytes):
            blobs.append(item)
            continue
        try:
            blobs.append(base64.b64decode(item, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise ServiceError(422, f"images[{i}] is not valid base64: {exc}", field=f"images[{i}]",
                               limit="base64 (RFC 4648)") from None
    return blobs


class _FormBody:
    """The multipart form as the fields the JSON body would have."""

    def __init__(self, model: str, top_k: int | None, images: list[bytes], version: str | None):
        self.model, self.top_k, self.images, self.version = model, top_k, images, version


async def _read_multipart(worker: Worker, request: Request) -> _FormBody:
    limit = worker.settings.max_items_per_request
    try:
        form = await request.form(max_files=limit + 1, max_fields=16)
    except ServiceError:  # the body grew past its size limit while being read
        raise
    except Exception as exc:  # malformed multipart, too many parts
        if "too many files" in str(exc).lower():
            raise ServiceError(413, f"more than {limit} images in one request", field="images", limit=limit) from None
        raise ServiceError(422, f"could not read the multipart body: {exc}", field="body") from None
    try:
        name = form.get("model")
        if not isinstance(name, str) or not name:
            raise ServiceError(422, "form field 'model' is required", field="model")
        top_raw = form.get("top_k")
        top_k = None
        if top_raw is not None:
            try:
                top_k = int(str(top_raw))
            except ValueError:
                raise ServiceError(422, f"top_k must be an integer, got {str(top_raw)[:20]!r}", field="top_k") from None
        files = [f for key in IMAGE_FILE_FIELDS for f in form.getlist(key)]
        if not files:
            raise ServiceError(422, f"no image file in the form (fields {', '.join(IMAGE_FILE_FIELDS)})",
                               field="images", limit=1)
        if len(files) > limit:
            raise ServiceError(413, f"{len(files)} images in one request, limit {limit}", field="images", limit=limit)
        blobs = []
        for i, f in enumerate(files):
            if not isinstance(f, UploadFile):
                raise ServiceError(422, f"images[{i}] is a text field, expected a file upload", field=f"images[{i}]")
            ctype = (f.content_type or "").lower()
            if ctype and not (ctype.startswith("image/") or ctype == "application/octet-stream"):
                raise ServiceError(415, f"images[{i}] has content type {ctype!r}, expected image/*",
                                   field=f"images[{i}]", limit="image/*")
            blobs.append(await f.read())
        version = form.get("version")
        return _FormBody(name, top_k, blobs, version if isinstance(version, str) and version else None)
    finally:
        await form.close()


async def list_models(worker: Worker, request: Request) -> Response:
    """Every model: status, task, version, labels, metrics, limits (no server paths)."""
    infos = []
    for entry in worker.models.values():
        m = entry.current
        if m is None:
            infos.append(ModelInfo(name=entry.name, version=None, task=None, status="unloaded").model_dump())
            continue
        mf = m.manifest
        info = ModelInfo(name=m.name, version=m.version, task=m.task, status=m.status, reason=m.reason,
                         load_seconds=m.load_seconds, versions=_versions(entry))
        if entry.failure is not None and entry.failure is not m:
            info.last_load_error = {"version": entry.failure.version, "reason": entry.failure.reason}
        if entry.rollout is not None:
            info.rollout = {"candidate": entry.rollout.candidate, "mode": entry.rollout.mode,
                            "share": entry.rollout.share}
        if mf is not None:
            info.labels = list(mf.labels)
            info.metrics = mf.metrics
            info.headline_metric = mf.headline_metric
            info.limits = worker.limits(m)
        if m.runtime is not None:
            info.provider = m.runtime.provider
            info.variant = m.runtime.variant
        if m.batcher is not None:
            info.max_batch_size = m.batcher.max_batch_size
            info.max_wait_ms = m.batcher.max_wait_s * 1000
        infos.append(info.model_dump())
    return json_response({"models": infos})


def _versions(entry) -> list[dict]:
    return [{"version": v, "role": entry.role(v), "status": m.status, "in_flight": m.in_flight}
            for v, m in sorted(entry.versions.items())]


# (method, path) -> handler; the front (service/front.py) dispatches these
ROUTES = {
    ("GET", "/models"): list_models,
    ("POST", "/classify"): classify,
    ("POST", "/translate"): translate,
    ("POST", "/classify_image"): classify_image,
}
# content types each POST path accepts (anything else is 415 before the body is read)
CONTENT_TYPES = {
    "/classify": ("application/json",),
    "/translate": ("application/json",),
    "/classify_image": ("application/json", "multipart/form-data"),
}
