"""The FastAPI app mounted into the BentoML service: ``/metrics`` and the OpenAPI page of every door.

The doors' routes are answered by ``service.front.Front`` before requests reach this app; they are
declared here too (calling the same handlers) so the OpenAPI page (``/``, ``/docs.json``) documents
their bodies, examples and errors.
"""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from monitoring import metrics

from .doors import json_api, oip_rest
from .errors import ServiceError
from .front import worker_of
from .schemas import (
    ERROR_RESPONSES,
    OIP_ERROR_RESPONSES,
    ClassifyRequest,
    ClassifyResponse,
    ImageJsonRequest,
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ModelsResponse,
    ServerMetadata,
    TranslateRequest,
    TranslateResponse,
)

api = FastAPI(
    title="modelserve",
    version="1.0",
    description="Serves every model in the registry (exported/) with onnxruntime: the task JSON API, and the "
    "Open Inference Protocol v2 over HTTP (/v2) and gRPC (inference.GRPCInferenceService).",
    docs_url=None,  # BentoML serves the Swagger page at / from the merged spec (/docs.json)
    redoc_url=None,
)


async def _service_error(request: Request, exc: ServiceError) -> Response:
    exc.log(request.method, request.url.path)
    door = oip_rest if request.url.path.startswith("/v2") else json_api
    return door.error_response(exc)


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    return await _service_error(request, ServiceError(exc.status_code, str(exc.detail)))


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    first = (exc.errors() or [{}])[0]
    field = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return await _service_error(request, ServiceError(422, first.get("msg", "invalid request"), field=field))


api.add_exception_handler(ServiceError, _service_error)
api.add_exception_handler(StarletteHTTPException, _http_error)
api.add_exception_handler(RequestValidationError, _validation_error)


# the request-body schemas of the JSON doors; ``document_limits`` writes the configured item limit into them
_ITEM_LISTS: list[dict[str, Any]] = []


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    """A pydantic JSON schema with its ``#/$defs/...`` references replaced by the definitions (inside the
    OpenAPI document those references would point nowhere)."""
    if isinstance(node, dict):
        ref = node.get("$ref", "")
        if ref.startswith("#/$defs/"):
            return _inline_refs(defs[ref.rsplit("/", 1)[1]], defs)
        return {k: _inline_refs(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


def _json_body(model_cls: Any, example: dict | None = None) -> dict[str, Any]:
    """OpenAPI requestBody for a pydantic model (the handlers parse bodies themselves)."""
    schema = model_cls.model_json_schema()
    schema = _inline_refs(schema, schema.get("$defs", {}))
    for name in ("texts", "images"):
        if name in schema.get("properties", {}):
            _ITEM_LISTS.append(schema["properties"][name])
    examples = schema.get("examples") or ([example] if example else [])
    content: dict[str, Any] = {"schema": schema}
    if examples:
        content["example"] = examples[0]
    return {"required": True, "content": {"application/json": content}}


def document_limits(max_items: int) -> None:
    """State the configured items-per-request limit in the OpenAPI page (before it is first generated)."""
    for items in _ITEM_LISTS:
        items["maxItems"] = max_items


@api.get("/metrics", include_in_schema=False)
async def prometheus_metrics() -> Response:
    """Prometheus exposition of every worker's metrics (BentoML's own route replaces this one
    when SERVICE_BENTOML_METRICS is on)."""
    body, content_type = await anyio.to_thread.run_sync(metrics.exposition)
    return Response(body, media_type=content_type)


# ---- the task JSON API -------------------------------------------------------------------------


@api.get("/models", response_model=ModelsResponse, tags=["JSON API"],
         summary="Every registered model: status, task, version, labels, metrics, limits")
async def models(request: Request) -> Response:
    return await json_api.list_models(worker_of(request), request)


@api.post("/classify", response_model=ClassifyResponse, responses=ERROR_RESPONSES, tags=["JSON API"],
          openapi_extra={"requestBody": _json_body(ClassifyRequest)},
          summary="Classify texts (single-label: top-k labels; multi-label: labels above threshold)")
async def classify(request: Request) -> Response:
    return await json_api.classify(worker_of(request), request)


@api.post("/translate", response_model=TranslateResponse, responses=ERROR_RESPONSES, tags=["JSON API"],
          openapi_extra={"requestBody": _json_body(TranslateRequest)}, summary="Translate texts")
async def translate(request: Request) -> Response:
    return await json_api.translate(worker_of(request), request)


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
            "schema": _json_body(ImageJsonRequest)["content"]["application/json"]["schema"],
            "example": {"model": "fashion", "images": ["iVBORw0KGgoAAAANSUhEUgAA..."], "top_k": 3},
        },
    },
}


_ITEM_LISTS.append(_IMAGE_BODY["content"]["multipart/form-data"]["schema"]["properties"]["images"])


@api.post("/classify_image", response_model=ClassifyResponse, responses=ERROR_RESPONSES, tags=["JSON API"],
          openapi_extra={"requestBody": _IMAGE_BODY},
          summary="Classify images: multipart upload or JSON with base64 images")
async def classify_image(request: Request) -> Response:
    return await json_api.classify_image(worker_of(request), request)


# ---- the Open Inference Protocol v2 over HTTP ---------------------------------------------------


@api.get("/v2", response_model=ServerMetadata, tags=["Open Inference Protocol"], summary="Server metadata")
async def v2_server(request: Request) -> Response:
    return await oip_rest.server_metadata(worker_of(request), request)


@api.get("/v2/health/live", tags=["Open Inference Protocol"], summary="Server live (200)")
async def v2_live(request: Request) -> Response:
    return await oip_rest.live(worker_of(request), request)


@api.get("/v2/health/ready", tags=["Open Inference Protocol"], summary="Server ready (200) or not (400)")
async def v2_ready(request: Request) -> Response:
    return await oip_rest.ready(worker_of(request), request)


@api.get("/v2/models/{name}", response_model=ModelMetadata, responses=OIP_ERROR_RESPONSES,
         tags=["Open Inference Protocol"], summary="Model metadata: versions, input and output tensors")
async def v2_model(name: str, request: Request) -> Response:
    return await oip_rest.model_metadata(worker_of(request), request, name)


@api.get("/v2/models/{name}/versions/{version}", response_model=ModelMetadata, responses=OIP_ERROR_RESPONSES,
         tags=["Open Inference Protocol"], summary="Metadata of one model version")
async def v2_model_version(name: str, version: str, request: Request) -> Response:
    return await oip_rest.model_metadata(worker_of(request), request, name, version)


@api.get("/v2/models/{name}/ready", tags=["Open Inference Protocol"], responses=OIP_ERROR_RESPONSES,
         summary="Model ready (200) or not (400)")
async def v2_model_ready(name: str, request: Request) -> Response:
    return await oip_rest.model_ready(worker_of(request), request, name)


@api.get("/v2/models/{name}/versions/{version}/ready", tags=["Open Inference Protocol"],
         responses=OIP_ERROR_RESPONSES, summary="Model version ready (200) or not (400)")
async def v2_model_version_ready(name: str, version: str, request: Request) -> Response:
    return await oip_rest.model_ready(worker_of(request), request, name, version)


_INFER_DOC = {"requestBody": _json_body(InferenceRequest)}


@api.post("/v2/models/{name}/infer", response_model=InferenceResponse, responses=OIP_ERROR_RESPONSES,
          tags=["Open Inference Protocol"], openapi_extra=_INFER_DOC,
          summary="Inference (JSON tensors, or the binary tensor data extension)")
async def v2_infer(name: str, request: Request) -> Response:
    return await oip_rest.infer(worker_of(request), request, name)


@api.post("/v2/models/{name}/versions/{version}/infer", response_model=InferenceResponse,
          responses=OIP_ERROR_RESPONSES, tags=["Open Inference Protocol"], openapi_extra=_INFER_DOC,
          summary="Inference on one model version")
async def v2_infer_version(name: str, version: str, request: Request) -> Response:
    return await oip_rest.infer(worker_of(request), request, name, version)
