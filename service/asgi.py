"""Pure ASGI layers around the HTTP API: the request guard and the inference fast path.

``RequestGuard`` checks body size and content type before anything reads the body and
records every request's metrics. ``InferenceRoutes`` is added to the BentoML service as an
ASGI middleware (``add_asgi_middleware``), so ``POST /classify``, ``/translate`` and
``/classify_image`` reach their handlers without passing through BentoML's request context,
Starlette's router and mount, or FastAPI's own middleware: with one small item per request
those layers cost more CPU than the model (benchmarks/RESULTS.md). Every other path, and the
OpenAPI page that documents the same handlers, is served by the FastAPI app below it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi.exceptions import RequestValidationError
from starlette.requests import Request
from starlette.responses import Response

from . import telemetry
from .batcher import Traffic
from .errors import ApiError, error_response

log = logging.getLogger("service.routes")

KNOWN_PATHS = frozenset({"/models", "/classify", "/translate", "/classify_image"})
JSON_ENDPOINTS = frozenset({"/classify", "/translate"})
IMAGE_CONTENT_TYPES = ("application/json", "multipart/form-data")

Handler = Callable[[Request], Awaitable[Response]]
ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]


def endpoint_label(path: str) -> str:
    """The metrics label for a path: the endpoint itself, or "other"."""
    return path if path in KNOWN_PATHS else "other"


class RequestGuard:
    """Body-size and content-type checks, the traffic count the batchers read, request metrics."""

    def __init__(self, app, traffic: Traffic, max_request_bytes: Callable[[], int | None]):
        self.app = app
        self.traffic = traffic
        self.max_request_bytes = max_request_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        endpoint = endpoint_label(path)
        t0 = time.perf_counter()
        status = 500

        async def send_wrapper(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.traffic.in_handlers += 1
        telemetry.request_started(endpoint)
        try:
            early = self._precheck(scope, path)
            if early is not None:
                telemetry.count_error(endpoint, "none", "validation")
                await error_response(Request(scope), early)(scope, receive, send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        finally:
            self.traffic.in_handlers -= 1
            telemetry.request_finished(endpoint)
            telemetry.record_request(endpoint, status, time.perf_counter() - t0)

    def _precheck(self, scope, path: str) -> ApiError | None:
        if scope["method"] != "POST":
            return None
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        limit = self.max_request_bytes()
        if limit and length and length.isdigit() and int(length) > limit:
            return ApiError(413, f"request body is {int(length)} bytes, limit {limit}", field="body", limit=limit)
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().decode("latin-1").lower()
        if path in JSON_ENDPOINTS and ctype != "application/json":
            return ApiError(415, f"content type {ctype or 'missing'!r} not accepted; send application/json",
                            field="content-type", limit=["application/json"])
        if path == "/classify_image" and ctype not in IMAGE_CONTENT_TYPES:
            return ApiError(415, f"content type {ctype or 'missing'!r} not accepted",
                            field="content-type", limit=list(IMAGE_CONTENT_TYPES))
        return None


class InferenceRoutes:
    """ASGI middleware: ``POST`` to one of ``routes`` goes straight to its handler (behind a guard).

    ``on_api_error`` and ``on_validation_error`` turn ``ApiError`` and ``RequestValidationError``
    into responses, exactly as the FastAPI app's exception handlers do for the same handlers.
    """

    def __init__(self, app, *, routes: dict[str, Handler], guard: Callable[[Any], RequestGuard],
                 on_api_error: ErrorHandler, on_validation_error: ErrorHandler):
        self.app = app
        self.routes = routes
        self.on_api_error = on_api_error
        self.on_validation_error = on_validation_error
        self.guarded = guard(self._dispatch)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.routes:
            return await self.guarded(scope, receive, send)
        await self.app(scope, receive, send)

    async def _dispatch(self, scope, receive, send) -> None:
        request = Request(scope, receive)
        try:
            response = await self.routes[scope["path"]](request)
        except ApiError as exc:
            response = await self.on_api_error(request, exc)
        except RequestValidationError as exc:
            response = await self.on_validation_error(request, exc)
        except Exception:
            log.exception("%s %s failed", scope["method"], scope["path"])
            response = await self.on_api_error(request, ApiError(500, "internal error, see the server log"))
        await response(scope, receive, send)
