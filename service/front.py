"""The HTTP front: one ASGI app ahead of BentoML's that serves every door's routes.

The worker's uvicorn serves it around BentoML's whole app (``traffic.serve_outermost``), so the JSON
API and the OIP REST door reach their handlers without any of BentoML's middlewares (Starlette's
error middleware, OpenTelemetry's, the timeout), its request context, Starlette's router and mount,
or FastAPI's middleware: with one small item per request those layers cost more CPU than the model
(benchmarks/RESULTS.md). When BentoML's access log, tracing or request metrics are on it is added
inside BentoML's middlewares instead (``add_asgi_middleware``), so they see every request. For each
request it checks the API key and the rate limit (``service.guard``: scope ``admin`` for
``/v2/repository/...``, ``infer`` otherwise), the body's content type and size (``Content-Length``
before reading, and every byte while reading, so a chunked body is cut off at the limit), sets the
request's deadline, keeps the traffic count the batchers read, answers 504 when a handler outlasts
the request timeout (outside BentoML's app), records the request metrics with the door's protocol
label, and renders a ``ServiceError`` the way the door's protocol says. Everything else
(``/metrics``, the OpenAPI page, BentoML's probes) goes on to the app below, behind the same key
check unless open. While the worker drains (SIGTERM), every answer carries ``Connection: close``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from . import auth, deadlines, telemetry
from .bounded import BoundedDict
from .doors import json_api, oip, oip_rest
from .errors import ServiceError
from .guard import Guard
from .traffic import HandlerTimeouts
from .worker import Worker

log = logging.getLogger("service.front")

Handler = Callable[..., Awaitable[Response]]
WORKER_KEY = "modelserve.worker"  # scope key: the worker, for handlers of the app below
# BentoML's own paths and the scrape: not client traffic
UNCOUNTED = frozenset({"/metrics", "/livez", "/readyz", "/healthz", "/docs.json", "/", "/docs", "/openapi.json",
                       "/schema.json"})
DOORS = {json_api.PROTOCOL: json_api.error_response, oip_rest.PROTOCOL: oip_rest.error_response}
PUBLIC_TITLE = "modelserve"
PUBLIC_DESCRIPTION = ("Serves every model in the registry with onnxruntime: the task JSON API, and the Open Inference "
                      "Protocol v2 over HTTP (/v2) and gRPC (inference.GRPCInferenceService).")
ADMIN_PREFIX = "/v2/repository/"  # the repository API: keys with the admin scope (when auth is on)
ROUTES_KEPT = 4096  # door routes whose match a front keeps
OPEN_ENDPOINTS = frozenset({"/v2/health/live", "/v2/health/ready"})  # door routes that are probes


def match(method: str, path: str) -> tuple[str, str, Handler, dict[str, str]] | None:
    """(protocol, endpoint label, handler, path parameters) of a door's route, or None."""
    handler = json_api.ROUTES.get((method, path))
    if handler is not None:
        return json_api.PROTOCOL, path, handler, {}
    if path == "/v2" or path.startswith("/v2/"):
        found = oip_rest.route(method, path)
        if found is not None:
            label, handler, params = found
            return oip_rest.PROTOCOL, label, handler, params
    return None


class BodyTooLarge(ServiceError):
    def __init__(self, received: int, limit: int):
        super().__init__(413, f"request body exceeds {limit} bytes (cut off after {received})", field="body",
                         limit=limit, headers={"Connection": "close"})


def limited(receive, limit: int):
    """``receive`` that counts body bytes as they arrive and raises 413 once they pass ``limit``."""
    received = 0

    async def receive_limited():
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(received, limit)
        return message

    return receive_limited


class DoorRequest(Request):
    """Starlette's request with ``body()`` read straight from ``receive``. Starlette reads it through an
    async generator, and asyncio registers every async generator a loop starts in a WeakSet (its shutdown
    hook): ~5 us of the ~65 us a JSON request costs the event loop in-process (benchmarks/RESULTS.md)."""

    model_name: str | None = None  # the model a door found in the request, for the error count (not Starlette's
    # ``request.state``: a State object per request)

    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            chunks = []
            while True:
                message = await self._receive()
                if message["type"] != "http.request":
                    raise ClientDisconnect()
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            self._stream_consumed = True
            self._body = b"".join(chunks)
        return self._body


class Front:
    """ASGI middleware: the doors' routes, guarded and counted; the rest passes to ``app``.

    ``worker_of()`` / ``guard_of()`` return this process's ``Worker`` / ``Guard`` (None while the
    models are loading). ``timeout_s``: answer a door's request 504 when its handler has not returned
    a response within that many seconds (BentoML's request timeout, for a front that sits ahead of
    BentoML's stack and its timeout middleware; None inside it).
    """

    def __init__(self, app, worker_of: Callable[[], Worker | None], guard_of: Callable[[], Guard | None],
                 timeout_s: float | None = None):
        self.app = app
        self.worker_of = worker_of
        self.guard_of = guard_of
        self.timeouts = HandlerTimeouts(timeout_s) if timeout_s else None
        self._worker: Worker | None = None  # found once: a process serves one worker for its lifetime
        self._guard: Guard | None = None
        self._series: dict[tuple[str, str], object] = {}  # (protocol, endpoint) -> its request metrics
        # (method, path) -> match() for the paths of door routes seen: a /v2 path is split and matched once, not
        # per request (~1.5 us)
        self._routes: BoundedDict = BoundedDict(ROUTES_KEPT)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        worker, guard = self._worker, self._guard
        if worker is None:
            worker = self._worker = self.worker_of()
        if guard is None:
            guard = self._guard = self.guard_of()
        scope[WORKER_KEY] = worker
        if guard is not None and guard.drain.draining:
            send = _closing(send)
        key = (scope["method"], scope["path"])
        found = self._routes.get(key)
        if found is None:
            found = match(*key)
            if found is not None:
                self._routes.keep(key, found)
        if found is None:
            if scope["path"] == "/metrics":  # whoever answers the scrape (the app or BentoML) reads the files
                telemetry.flush()
            if scope["path"] in UNCOUNTED:
                refused = self._guard_other(guard, scope)
                if refused is None and scope["path"] == "/docs.json":
                    return await self.app(scope, receive, _public_docs(send))
                return await (refused or self.app)(scope, receive, send)
            return await self._counted(worker, guard, json_api.PROTOCOL, "other", scope, receive, send, None, {})
        protocol, endpoint, handler, params = found
        await self._counted(worker, guard, protocol, endpoint, scope, receive, send, handler, params)

    async def _counted(self, worker: Worker | None, guard: Guard | None, protocol: str, endpoint: str, scope,
                       receive, send, handler: Handler | None, params: dict[str, str]) -> None:
        t0 = time.perf_counter()
        status = 500
        series = self._series.get((protocol, endpoint))
        if series is None:
            series = self._series[(protocol, endpoint)] = telemetry.request_series(protocol, endpoint)
        traffic = worker.traffic if worker is not None else None
        if traffic is not None:
            traffic.in_handlers += 1
        telemetry.call(series.start)
        try:
            if handler is None:  # a path no door serves: the app below answers, its status read on the way out
                async def send_wrapper(message):
                    nonlocal status
                    if message["type"] == "http.response.start":
                        status = message["status"]
                    await send(message)

                response = self._guard_other(guard, scope)
                await (response or self.app)(scope, receive, send_wrapper)
            else:
                response = await self._answer(worker, guard, protocol, endpoint, scope, receive, handler, params)
                status = response.status_code
                await response(scope, receive, send)
        finally:
            if traffic is not None:
                traffic.in_handlers -= 1
            telemetry.call(series.done, status, time.perf_counter() - t0)

    @staticmethod
    def _guard_other(guard: Guard | None, scope) -> Response | None:
        """The key check for a path no door serves (the app below answers it, mostly 404): an error or None."""
        if guard is None or guard.is_open(scope["path"]):
            return None
        try:
            guard.admit(auth.http_headers(scope), _client(scope))
        except ServiceError as err:
            err.log(scope["method"], scope["path"])
            return json_api.error_response(err)
        return None

    async def _answer(self, worker: Worker | None, guard: Guard | None, protocol: str, endpoint: str, scope,
                      receive, handler: Handler, params: dict[str, str]) -> Response:
        limit = worker.settings.max_request_bytes if worker is not None else 0
        # a body that states its length was checked against the limit before reading (precheck); one that
        # does not (chunked) is counted as it arrives
        headers = auth.http_headers(scope)
        counted = scope["method"] == "POST" and "content-length" not in headers
        request = DoorRequest(scope, limited(receive, limit) if counted else receive)
        task = self.timeouts.start() if self.timeouts is not None else None
        try:
            if worker is None or guard is None:
                raise ServiceError(503, "service is still loading models", kind="overload", retry_after=5)
            if endpoint not in OPEN_ENDPOINTS:
                guard.admit(headers, _client(scope), "admin" if endpoint.startswith(ADMIN_PREFIX) else "infer")
                precheck(worker, scope, protocol, headers)
                guard.deadlines.start(endpoint, deadlines.from_headers(headers))
            elif endpoint == "/v2/health/ready" and guard.drain.draining:
                return oip_rest.json_response({"ready": False}, 400)  # the protocol's "not ready"
            return await handler(worker, request, **params)
        except ServiceError as err:
            return self._error(request, protocol, endpoint, err)
        except asyncio.CancelledError:
            if task is None or not self.timeouts.expired(task):
                raise
            return self._error(request, protocol, endpoint, ServiceError(
                504, f"no answer within the service's request timeout of {self.timeouts.timeout:g} seconds",
                limit=self.timeouts.timeout))
        except Exception:
            log.exception("%s %s failed", scope["method"], scope["path"])
            return self._error(request, protocol, endpoint, ServiceError(500, "internal error, see the server log"))
        finally:
            if task is not None:
                self.timeouts.stop(task)

    @staticmethod
    def _error(request: Request, protocol: str, endpoint: str, err: ServiceError) -> Response:
        err.log(request.method, request.url.path)
        telemetry.count_error(protocol, endpoint, getattr(request, "model_name", None), err.kind)
        return DOORS[protocol](err)


def precheck(worker: Worker, scope, protocol: str, headers: dict[str, str]) -> None:
    """Body size (from Content-Length) and content type, before the body is read (``headers``: lower-case names)."""
    if scope["method"] != "POST":
        return
    length = headers.get("content-length")
    limit = worker.settings.max_request_bytes
    if length and length.isdigit() and int(length) > limit:
        raise ServiceError(413, f"request body is {int(length)} bytes, limit {limit}", field="body", limit=limit,
                           headers={"Connection": "close"})
    accepted = json_api.CONTENT_TYPES.get(scope["path"]) if protocol == json_api.PROTOCOL else None
    if accepted:
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in accepted:
            raise ServiceError(415, f"content type {ctype or 'missing'!r} not accepted; send "
                               f"{' or '.join(accepted)}", field="content-type", limit=list(accepted))


def _client(scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


def _closing(send):
    """``send`` that adds ``Connection: close`` to the response (uvicorn then closes the connection)."""

    async def send_closing(message):
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return send_closing


def _public_docs(send):
    """``send`` for BentoML's OpenAPI document that replaces its ``info`` (BentoML's README with its version
    badge and contact) with this service's title and description: no library versions on a public page."""
    start: dict | None = None
    chunks: list[bytes] = []

    async def send_docs(message):
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        body = b"".join(chunks)
        if start is not None and start["status"] == 200:
            try:
                doc = json.loads(body)
                doc["info"] = {"title": PUBLIC_TITLE, "version": oip.server_version(), "description": PUBLIC_DESCRIPTION}
                body = json.dumps(doc).encode()
            except ValueError:
                pass
        headers = [(k, v) for k, v in (start or {}).get("headers", []) if k.lower() != b"content-length"]
        await send({**(start or {"type": "http.response.start", "status": 500}),
                    "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return send_docs


def worker_of(request: Request) -> Worker:
    """The worker the front attached to this request (handlers in the app below use it)."""
    worker = request.scope.get(WORKER_KEY)
    if worker is None:
        raise ServiceError(503, "service is still loading models", kind="overload")
    return worker


__all__ = ["Front", "WORKER_KEY", "match", "worker_of"]
