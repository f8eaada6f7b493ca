"""BentoML's request timeout (``traffic.timeout``) without a pending timer per answered request.

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
