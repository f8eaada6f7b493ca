"""Triton's generate extension on the OIP REST door: ``/v2/models/{name}[/versions/{v}]/generate`` and
``/generate_stream``, for translation models.

The request is one JSON object whose keys are the model's input names and whose ``parameters``
are request options: ``{"text": "Das Haus ist klein.", "parameters": {"num_beams": 1}}`` (a list
of texts is allowed; ``text_input``, the name LLM clients send, is taken for ``text``). The answer
carries the outputs by name: ``{"model_name", "model_version", "translation": ..., "text_output": ...}``
(a string for one text, a list for a list). ``generate_stream`` answers server-sent events, Triton's
way (``data:`` lines only): ``{"model_name", "model_version", "index", "text_output"}`` per new piece
of an item's text, then the full answer with ``"final": true``; an error after the response began
is ``{"error": message}``. Errors before that are the door's usual ``{"error": message}`` with
the HTTP status.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .. import dataplane, streaming
from ..errors import ServiceError
from ..worker import Worker

TEXT_KEYS = ("text", "text_input")
ALLOWED = {*TEXT_KEYS, "id", "parameters"}
TASKS = ("translation",)


async def _parse(worker: Worker, request: Request, name: str, version: str | None, endpoint: str):
    request.model_name = name
    try:
        body = json.loads(await request.body())
    except ValueError as exc:
        raise ServiceError(400, f"malformed JSON: {exc}", field="body") from None
    if not isinstance(body, dict):
        raise ServiceError(422, "the body must be a JSON object", field="body", limit="object")
    unknown = sorted(set(body) - ALLOWED)
    if unknown:
        raise ServiceError(422, f"unknown field(s) {unknown}; {endpoint} takes {sorted(ALLOWED)}", field=unknown[0],
                           limit=sorted(ALLOWED))
    given = [k for k in TEXT_KEYS if k in body]
    if len(given) != 1:
        raise ServiceError(422, "give the input 'text' (or 'text_input'): a string or a list of strings", field="text",
                           limit="string or list of strings")
    text = body[given[0]]
    single = isinstance(text, str)
    texts = [text] if single else text
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ServiceError(422, f"{given[0]} must be a string or a list of strings", field=given[0],
                           limit="string or list of strings")
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise ServiceError(422, "parameters must be a JSON object", field="parameters", limit="object")
    request_id = body.get("id")
    route = worker.route_for(name, TASKS, endpoint, version=version,
                             request_id=str(request_id) if request_id is not None else request.headers.get("x-request-id"))
    spec = route.model.spec
    allowed = spec.option_names | {"stream"}  # Triton clients send "stream"; the endpoint decides
    bad = sorted(set(params) - allowed)
    if bad:
        raise ServiceError(422, f"unknown parameter(s) {bad}; {name} takes {sorted(allowed)}", field=f"parameters.{bad[0]}",
                           limit=sorted(allowed))
    given_options = {o.name: params.get(o.name) for o in spec.options}
    return route, texts, single, given_options, request_id


def _head(route, request_id) -> dict[str, Any]:
    head = {"model_name": route.model.name, "model_version": route.model.version}
    if request_id is not None:
        head["id"] = request_id
    return head


def _outputs(results: list[dict], single: bool) -> dict[str, Any]:
    texts = [r["translation"] for r in results]
    value = texts[0] if single else texts
    return {"translation": value, "text_output": value}


async def generate(worker: Worker, request: Request, name: str, version: str | None = None) -> Response:
    route, texts, single, given, request_id = await _parse(worker, request, name, version, "generate")
    results, _ = await streaming.unless_disconnected(
        request, dataplane.infer(worker, route, texts, given, field="text"))
    payload = {**_head(route, request_id), **_outputs(results, single)}
    return Response(json.dumps(payload, separators=(",", ":"), ensure_ascii=False), media_type="application/json")


async def generate_stream(worker: Worker, request: Request, name: str, version: str | None = None) -> Response:
    route, texts, single, given, request_id = await _parse(worker, request, name, version, "generate_stream")
    events, _ = await streaming.open_translation(worker, route, texts, given, field="text")
    head = _head(route, request_id)
    return streaming.event_stream(streaming.render(
        events,
        piece=lambda i, text: streaming.sse({**head, "index": i, "text_output": text}),
        done=lambda results: streaming.sse({**head, **_outputs(results, single), "final": True}),
        error=lambda err: streaming.sse({"error": err.message}),
    ))
