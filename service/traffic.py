"""BentoML's request timeout (``traffic.timeout``) without a pending timer per answered request.

Two forms: ``TimeoutMiddleware`` for the requests that pass through BentoML's app (its own stack
builds it), and ``HandlerTimeouts`` for the doors' requests when ``service.front.Front`` answers
them ahead of that stack (``serve_outermost``).

BentoML 1.4.39's ``TimeoutMiddleware`` schedules ``loop.call_later(timeout, ...)`` for every HTTP
request and never cancels it, and runs the rest of the app in a second task. Each answered
request so left a timer handle, a future and a bound method alive for the whole timeout (120 s
here): at a steady 1,700 requests/s that was about 200,000 of them, the soak's resident memory
climbing by some 150 MB over its first two minutes and then staying there (tracemalloc in the
worker, benchmarks/RESULTS.md, soak section); the higher the request rate, the more memory.

This one keeps the behaviour (504 when no response has started within the timeout; once a
response has started, streaming included, it runs to its end) with ``asyncio.timeout`` in the
request's own task: the timer is cancelled as soon as the response starts, and no task is added.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bentoml._internal.server.http import traffic
from starlette.responses import JSONResponse


class TimeoutMiddleware:
    """``traffic.timeout`` for one worker's HTTP requests (see the module docstring)."""

    def __init__(self, app: Any, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        deadline = asyncio.timeout(self.timeout)
        started = False

        async def _send(message) -> None:
            nonlocal started
            if not started:
                started = True
                deadline.reschedule(None)  # the answer has begun: no timeout from here on
            await send(message)

        try:
            async with deadline:
                await self.app(scope, receive, _send)
        except TimeoutError:
            if started:  # cannot happen (rescheduled), but never send a second response
                raise
            response = JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"},
                                    status_code=504)
            await response(scope, receive, send)


def install() -> None:
    """Make BentoML build its apps with this middleware (it looks the class up when it builds one)."""
    traffic.TimeoutMiddleware = TimeoutMiddleware


class HandlerTimeouts:
    """The same timeout for handlers run outside BentoML's stack: a handler that has not returned its
    response within ``timeout`` seconds is cancelled, and its caller answers 504 (``expired``).

    One sweeper task per event loop walks the running handlers every ``sweep_s`` (at most a quarter
    of the timeout) instead of a timer per request: ``asyncio.timeout`` costs a request ~5 us of the
    event loop (a timer scheduled, then cancelled), this a dict entry. The timeout is honoured to
    within ``sweep_s``.
    """

    def __init__(self, timeout: float, sweep_s: float = 0.5) -> None:
        self.timeout = timeout
        self.sweep_s = min(sweep_s, timeout / 4)
        self._started: dict[asyncio.Task, float] = {}  # running handler -> time.monotonic() at its start
        self._expired: set[asyncio.Task] = set()
        self._sweeper: asyncio.Task | None = None

    def start(self) -> asyncio.Task:
        """Time the current task's handler from now; ``stop`` it once the handler returned."""
        task = asyncio.current_task()
        self._started[task] = time.monotonic()
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="handler-timeouts")
        return task

    def stop(self, task: asyncio.Task) -> None:
        self._started.pop(task, None)
        self._expired.discard(task)

    def expired(self, task: asyncio.Task) -> bool:
        """Whether ``task`` was cancelled for its timeout (then the cancellation is taken back, as
        ``asyncio.timeout`` does, so the caller can answer)."""
        if task not in self._expired:
            return False
        self._expired.discard(task)
        task.uncancel()
        return True

    async def _sweep(self) -> None:
        while self._started:
            await asyncio.sleep(self.sweep_s)
            limit = time.monotonic() - self.timeout
            for task, started in list(self._started.items()):
                if started <= limit:
                    del self._started[task]
                    self._expired.add(task)
                    task.cancel()


def serve_outermost(service: Any, wrap: Any) -> None:
    """Make ``wrap(app)`` the ASGI app the worker's uvicorn serves for ``service``, where ``app`` is the
    one BentoML builds (its middlewares, its routes and mounts): what ``wrap`` answers itself skips
    every layer of it. BentoML's worker builds the app with ``Service.to_asgi``, looked up when it
    starts, after the service's module is imported."""
    from _bentoml_sdk.service.factory import Service

    build = Service.to_asgi

    def to_asgi(self, is_main: bool = True):
        app = build(self, is_main)
        return wrap(app) if self is service else app

    Service.to_asgi = to_asgi
