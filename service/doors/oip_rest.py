"""Open Inference Protocol v2 over HTTP: health, server and model metadata, readiness, inference.

Inference bodies are JSON tensors or, with the binary tensor data extension (which
``tritonclient.http`` uses by default), a JSON header of ``Inference-Header-Content-Length``
bytes followed by raw tensors. Errors are ``{"error": message}`` with the HTTP status the JSON
API would answer.
"""

from __future__ import annotations


from starlette.requests import Request
from starlette.responses import Response

from .. import auth
from ..errors import ServiceError
from ..worker import Worker
from . import oip, oip_generate, repository
from .oip_codec import decode_rest_request, encode_rest_response
from .responses import RawResponse, json_response

PROTOCOL = "oip-rest"
HEADER_LENGTH = "inference-header-content-length"
HEADER_LENGTH_RAW = HEADER_LENGTH.encode()
BINARY = b"application/octet-stream"
REQUEST_ID_HEADER = "x-request-id"



def error_response(err: ServiceError) -> Response:
    return json_response({"error": err.message}, err.status, err.http_headers())


async def live(worker: Worker, request: Request) -> Response:
    return json_response({"live": True})


async def ready(worker: Worker, request: Request) -> Response:
    # the protocol: 200 = ready, 4xx = not ready
    return json_response({"ready": worker.ready}, 200 if worker.ready else 400)


async def server_metadata(worker: Worker, request: Request) -> Response:
    return json_response(oip.server_metadata())


async def model_metadata(worker: Worker, request: Request, name: str, version: str | None = None) -> Response:
    return json_response(oip.model_metadata(worker.model(name, version)))


async def model_ready(worker: Worker, request: Request, name: str, version: str | None = None) -> Response:
    try:
        model = worker.model(name, version)
    except ServiceError as err:
        if err.status == 404:
            raise
        return json_response({"name": name, "ready": False}, 400)
    return json_response({"name": model.name, "ready": True})


async def infer(worker: Worker, request: Request, name: str, version: str | None = None) -> Response:
    request.model_name = name
    headers = auth.http_headers(request.scope)
    body = await request.body()
    try:
        req = decode_rest_request(body, _header_length(headers.get(HEADER_LENGTH)), worker.rest_headers)
    except ServiceError:
        worker.model(name, version)  # an unknown or unavailable model (404 / 503) comes before a malformed body
        raise
    # resolved after the last await before the dataplane, so a version switch in between is seen
    route = worker.route(name, version, req.id or headers.get(REQUEST_ID_HEADER))
    model = route.model
    outputs = await oip.infer(worker, route, req)
    head = {"model_name": model.name, "model_version": model.version}
    if req.id:
        head["id"] = req.id
    payload, length = encode_rest_response(head, outputs)
    if length is None:
        return RawResponse(payload)
    return RawResponse(payload, media_type=BINARY, raw_headers=[(HEADER_LENGTH_RAW, str(length).encode())])


def _header_length(header: str | None) -> int | None:
    try:
        return int(header) if header is not None else None
    except ValueError:
        raise ServiceError(400, f"Inference-Header-Content-Length must be an integer, got {header[:20]!r}",
                           field="Inference-Header-Content-Length") from None


def route(method: str, path: str):
    """(endpoint label, handler, path parameters) for a ``/v2`` path, or None when it is not one.

    Paths: /v2, /v2/health/{live,ready}, /v2/models/{name}[/versions/{version}][/ready|/infer|/generate|
    /generate_stream].
    """
    parts = path.split("/")[2:]  # after "", "v2"
    if method == "GET" and parts in ([], [""]):
        return "/v2", server_metadata, {}
    if method == "GET" and len(parts) == 2 and parts[0] == "health" and parts[1] in ("live", "ready"):
        return f"/v2/health/{parts[1]}", live if parts[1] == "live" else ready, {}
    if parts and parts[0] == "repository":
        return repository.route(method, parts[1:])
    if len(parts) < 2 or parts[0] != "models" or not parts[1]:
        return None
    params = {"name": parts[1]}
    rest = parts[2:]
    label = "/v2/models/{name}"
    if len(rest) >= 2 and rest[0] == "versions" and rest[1]:
        params["version"] = rest[1]
        rest = rest[2:]
        label += "/versions/{version}"
    if not rest and method == "GET":
        return label, model_metadata, params
    if rest == ["ready"] and method == "GET":
        return label + "/ready", model_ready, params
    if rest == ["infer"] and method == "POST":
        return label + "/infer", infer, params
    if rest in (["generate"], ["generate_stream"]) and method == "POST":  # Triton's generate extension
        return f"{label}/{rest[0]}", getattr(oip_generate, rest[0]), params
    return None
