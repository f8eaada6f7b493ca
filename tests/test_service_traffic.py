"""The request-timeout middleware (service/traffic.py): BentoML's behaviour without a timer left per request."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from bentoml._internal.server.http import traffic as bentoml_traffic

from service.traffic import TimeoutMiddleware

ROOT = Path(__file__).resolve().parents[1]
ORIGINAL = bentoml_traffic.TimeoutMiddleware  # as imported, before any test imports service.app


def _app(delay_before: float = 0.0, stream_for: float = 0.0):
    async def app(scope, receive, send):
        await asyncio.sleep(delay_before)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if stream_for:
            await asyncio.sleep(stream_for)
            await send({"type": "http.response.body", "body": b"part,", "more_body": True})
        await send({"type": "http.response.body", "body": b"done"})
    return app


async def _call(middleware) -> tuple[int, bytes]:
    messages = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        messages.append(message)

    await middleware({"type": "http", "method": "GET", "path": "/", "headers": []}, receive, send)
    status = next(m["status"] for m in messages if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")


def _pending_timers(loop) -> int:
    return sum(not h.cancelled() for h in loop._scheduled)


def test_a_request_without_an_answer_in_time_gets_504():
    status, body = asyncio.run(_call(TimeoutMiddleware(_app(delay_before=1.0), timeout=0.1)))
    assert status == 504 and "0.1 seconds" in json.loads(body)["error"]


def test_an_answer_that_has_started_runs_past_the_timeout():
    status, body = asyncio.run(_call(TimeoutMiddleware(_app(stream_for=0.3), timeout=0.1)))
    assert (status, body) == (200, b"part,done")


@pytest.mark.parametrize("cls, left", [(TimeoutMiddleware, 0), (ORIGINAL, 200)])
def test_answered_requests_leave_no_timer_behind(cls, left):
    """BentoML's own class leaves one pending timer per answered request for the whole timeout (the
    soak's memory growth); ours none."""
    async def main():
        middleware = cls(_app(), timeout=120)
        for _ in range(200):
            assert await _call(middleware) == (200, b"done")
        return _pending_timers(asyncio.get_running_loop())

    # asyncio's own loop even where another test installed uvloop's policy: its timers are inspectable
    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
        assert runner.run(main()) == left


def test_the_service_installs_it_before_bentoml_builds_its_app():
    code = ("import service.app, bentoml._internal.server.http.traffic as t, service.traffic as ours\n"
            "assert t.TimeoutMiddleware is ours.TimeoutMiddleware, t.TimeoutMiddleware\n"
            "from bentoml._internal.server.base_app import BaseAppFactory\n"
            "class App(BaseAppFactory):\n"
            "    name = 'probe'\n"
            "    def __init__(self): super().__init__(timeout=5)\n"
            "classes = [m.cls for m in App().middlewares]\n"
            "assert ours.TimeoutMiddleware in classes, classes\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
