"""The request timeout (service/traffic.py): BentoML's behaviour without a timer left per request, inside
BentoML's app (the middleware) and ahead of it (the front's handler timeouts)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bentoml._internal.server.http import traffic as bentoml_traffic

from service.traffic import HandlerTimeouts, TimeoutMiddleware
from service_support import names_by_task, serve, smoke_models  # noqa: F401 (fixture)

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


def test_handler_timeouts_cancel_a_late_handler_and_nothing_else():
    """A handler past the timeout is cancelled and reported expired (its cancellation taken back); one in
    time is left alone; a cancellation from elsewhere (the client went away) is not taken for a timeout."""
    timeouts = HandlerTimeouts(0.2, sweep_s=0.05)

    async def handler(seconds: float) -> str:
        task = timeouts.start()
        try:
            await asyncio.sleep(seconds)
            return "answered"
        except asyncio.CancelledError:
            if not timeouts.expired(task):
                raise
            await asyncio.sleep(0)  # the task runs on after the timeout: its cancellation was taken back
            return "504"
        finally:
            timeouts.stop(task)

    async def main():
        late, early = asyncio.create_task(handler(5.0)), asyncio.create_task(handler(0.05))
        gone = asyncio.create_task(handler(5.0))
        await asyncio.sleep(0.1)
        gone.cancel()
        results = await asyncio.gather(late, early, gone, return_exceptions=True)
        return results, dict(timeouts._started), set(timeouts._expired)

    t0 = time.monotonic()
    (late, early, gone), started, expired = asyncio.run(main())
    assert (late, early) == ("504", "answered")
    assert isinstance(gone, asyncio.CancelledError)
    assert started == {} and expired == set()
    assert time.monotonic() - t0 < 1.0  # the late one was cut at ~0.2-0.25 s, not left to its 5 s


@pytest.mark.parametrize("layers_env, front_outermost", [({}, True), ({"SERVICE_TRACING": "true"}, False)])
def test_the_front_serves_ahead_of_bentomls_app_unless_its_per_request_layers_are_on(layers_env, front_outermost,
                                                                                   tmp_path):
    """What uvicorn serves: the front around BentoML's whole app by default; inside it (BentoML's tracing,
    access log or request metrics see every request) when one of those is on."""
    code = ("import service.app\n"
            "app = service.app.ModelService.to_asgi()\n"
            "print(type(app).__name__, type(getattr(app, 'app', None)).__name__)\n")
    env = {**os.environ, "MODEL_REGISTRY": str(tmp_path), "BENTOML_HOME": str(tmp_path / "home"),
           "BENTOML_DO_NOT_TRACK": "True", **layers_env}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    outer = result.stdout.split()[-2:]
    assert outer == (["Front", "Starlette"] if front_outermost else ["Starlette", "NoneType"]), outer


def test_a_request_body_that_does_not_arrive_in_time_gets_504_from_the_door(smoke_models, tmp_path):
    """The real server with a 1 s request timeout: a client that sends its headers and then nothing gets
    the JSON API's own 504 (field, limit) at the timeout, and the server answers the next request."""
    name = names_by_task(smoke_models)["text-classification"]
    env = {"SERVICE_REQUEST_TIMEOUT_S": "1", "SERVICE_MODELS": json.dumps([name])}
    with serve(smoke_models, tmp_path / "serve", env=env) as server:
        host, port = server.url.removeprefix("http://").split(":")
        body = json.dumps({"model": name, "texts": ["late"]}).encode()
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body))  # the body never follows
            t0 = time.monotonic()
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                answer += chunk
            waited = time.monotonic() - t0
        head, _, payload = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 504"), answer
        error = json.loads(payload)["error"]
        assert error["status"] == 504 and error["limit"] == 1 and "request timeout of 1 seconds" in error["message"]
        assert 0.9 <= waited < 3.0, waited
        with server.client() as c:
            assert c.post("/classify", json={"model": name, "texts": ["on time"]}).status_code == 200
