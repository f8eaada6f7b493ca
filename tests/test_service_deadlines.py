"""Deadlines and fast overload answers: the batcher's admission in-process, then every door of the real service.

In-process a plain function stands in for the model (its delay is what is tested). Against the
real service, overload is the issue's scenario scaled to the smoke translator: many clients each
sending 64 sentences with beam search, far more work than the model can do before their deadline.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from service import deadlines
from service.batcher import Batcher, Overloaded
from service.deadlines import Deadline, DeadlineExceeded, Deadlines
from service.errors import ServiceError
from service.settings import BatchSettings, DeadlineSettings
from service_support import benchmark_module, names_by_task, serve, smoke_models  # noqa: F401 (fixture)


class SlowModel:
    """``delay`` seconds per call; records every item it saw."""

    def __init__(self, delay: float):
        self.delay = delay
        self.seen: list = []
        self.lock = threading.Lock()

    def __call__(self, items, options, waits):
        time.sleep(self.delay)
        with self.lock:
            self.seen.extend(items)
        return [{"echo": it} for it in items]


async def _submit(batcher: Batcher, items: list, timeout_s: float | None):
    """``batcher.submit`` in a task of its own with a deadline ``timeout_s`` from now (None: none)."""
    async def run():
        if timeout_s is not None:
            now = time.monotonic()
            deadlines.current.set(Deadline(now, now + timeout_s, 300.0, True))
        return await batcher.submit(items)

    return await asyncio.create_task(run())


def test_a_deadline_that_passes_in_the_queue_answers_then_and_its_items_are_never_inferred():
    model = SlowModel(0.3)
    batcher = Batcher("m", model, BatchSettings(max_batch_size=1, max_wait_ms=0))

    async def main():
        busy = asyncio.create_task(_submit(batcher, ["first"], None))
        await asyncio.sleep(0.02)  # "first" holds the model; nothing is measured yet, so "late" is admitted
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await _submit(batcher, ["late"], 0.1)
        waited = time.monotonic() - t0
        await busy
        await asyncio.sleep(0.05)
        return waited

    waited = asyncio.run(main())
    assert 0.09 <= waited < 0.25, waited
    assert model.seen == ["first"]


def test_admission_refuses_at_once_what_cannot_meet_its_deadline():
    model = SlowModel(0.1)
    batcher = Batcher("m", model, BatchSettings(max_batch_size=1, max_wait_ms=0, max_queue_items=6))

    async def main():
        await _submit(batcher, ["warm"], None)  # measures 0.1 s per item
        queued = [asyncio.create_task(_submit(batcher, [f"q{i}"], None)) for i in range(5)]
        await asyncio.sleep(0.01)
        t0 = time.monotonic()
        with pytest.raises(Overloaded) as refused:
            await _submit(batcher, ["hurried"], 0.2)
        refused_after = time.monotonic() - t0
        assert 0.3 <= refused.value.retry_after <= 0.7, refused.value.retry_after  # the queue's 0.5 s, less the running call
        ok = await _submit(batcher, ["patient"], 2.0)
        with pytest.raises(Overloaded) as full:
            await _submit(batcher, ["a", "b", "c", "d", "e", "f", "g"], None)
        assert "limit 6" in str(full.value) and full.value.retry_after >= 0
        await asyncio.gather(*queued)
        return refused_after, ok

    refused_after, ok = asyncio.run(main())
    assert refused_after < 0.01, refused_after
    assert ok == [{"echo": "patient"}] and "hurried" not in model.seen


def test_retry_after_is_whole_seconds_and_at_least_one():
    assert ServiceError(503, "x", retry_after=0.2).http_headers()["Retry-After"] == "1"
    assert ServiceError(503, "x", retry_after=2.01).http_headers()["Retry-After"] == "3"
    assert ServiceError(429, "x", retry_after=1.0).grpc_trailers() == (("retry-after", "1"),)
    assert "Retry-After" not in ServiceError(400, "x").http_headers()


def test_deadline_rules():
    # Deadlines.start sets the request's context variable: run in a context of its own, or a later test's
    # asyncio.run (which copies this thread's context) would find this long-passed deadline
    contextvars.copy_context().run(_deadline_rules)


def _deadline_rules():
    rules = Deadlines(DeadlineSettings(default_s=10, endpoints={"/translate": 30}, max_s=60))
    assert rules.budget("/classify", None) == 10 and rules.budget("/translate", None) == 30
    assert rules.budget("/classify", 0.5) == 0.5 and rules.budget("/classify", 600) == 60
    d = rules.start("/classify", None, now=100.0)
    d.ask(2.0)  # an OIP timeout parameter, no header: it replaces the default
    assert d.at == 102.0
    d = rules.start("/classify", 1.0, now=100.0)
    d.ask(5.0)  # both given: the sooner wins
    assert d.at == 101.0
    assert deadlines.from_parameters({"timeout": 250_000}) == 0.25  # microseconds, as Triton defines it
    for bad in ("0", "-1", "soon", "nan", "inf"):
        with pytest.raises(ServiceError) as err:
            deadlines.parse_seconds(bad)
        assert err.value.status == 400 and err.value.field == "X-Request-Timeout"
    with pytest.raises(ServiceError):
        deadlines.from_parameters({"timeout": "1s"})


# ---- the real service -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def names(smoke_models: Path) -> dict[str, str]:
    return names_by_task(smoke_models)


@pytest.fixture(scope="module")
def server(smoke_models: Path, names, tmp_path_factory):
    env = {"SERVICE_MODELS": json.dumps([names["translation"], names["text-classification"]])}
    with serve(smoke_models, tmp_path_factory.mktemp("deadlines"), env=env) as srv:
        yield srv


def _text(module, texts):
    tensor = module.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
    return tensor


def test_a_request_whose_time_is_up_gets_504_through_every_door(server, names):
    """A deadline too short to reach the model: 504 / DEADLINE_EXCEEDED, named, not a 500 or a hang."""
    name = names["text-classification"]
    resp = httpx.post(f"{server.url}/classify", json={"model": name, "texts": ["x"]},
                      headers={"X-Request-Timeout": "0.000001"}, timeout=30)
    assert resp.status_code == 504 and resp.json()["error"]["field"] == "timeout", resp.text
    rest = thttp.InferenceServerClient(server.http_address)
    with pytest.raises(InferenceServerException) as err:
        rest.infer(name, [_text(thttp, ["x"])], timeout=1)  # the OIP timeout parameter: 1 microsecond
    assert err.value.status() == "504"
    assert rest.infer(name, [_text(thttp, ["x"])], timeout=5_000_000).as_numpy("label").shape == (1,)
    rest.close()
    bad = httpx.post(f"{server.url}/classify", json={"model": name, "texts": ["x"]},
                     headers={"X-Request-Timeout": "soon"}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "X-Request-Timeout"
    grpc = tgrpc.InferenceServerClient(server.grpc_address)
    assert grpc.infer(name, [_text(tgrpc, ["x"])], client_timeout=5).as_numpy("label").shape == (1,)
    grpc.close()


def test_overload_is_answered_at_once_with_retry_after_and_accepted_requests_meet_their_deadline(server, names):
    """24 clients, each 64 sentences with beam 4 (about 0.3 s of model time per request on the smoke
    translator on an idle machine), deadline 1 s, waiting what Retry-After says when refused: the
    service refuses most at once (99% within 100 ms by its own histogram) with Retry-After, the
    accepted ones finish within their deadline, nobody waits for the client's timeout."""
    bench = benchmark_module("overload_bench")
    body = bench.translate_body(names["translation"])
    assert httpx.post(f"{server.url}/translate", json=body, timeout=60).status_code == 200  # its cost is measured
    result, probed = bench.with_probe(server.url, body, {"X-Request-Timeout": "1"}, 6, lambda: asyncio.run(bench.drive(
        server.url, body, clients=24, seconds=6, headers={"X-Request-Timeout": "1"}, client_timeout=30,
        honor_retry_after=True)))
    summary, probe = bench.summarize(result), bench.summarize(probed)
    metrics = httpx.get(f"{server.url}/metrics").text
    within, total = bench.answered_within(metrics, "/translate", "503", "0.1")
    in_time, accepted = bench.answered_within(metrics, "/translate", "200", "1.0")
    print(json.dumps(summary), f"service side: 503 within 100 ms {within:.0f}/{total:.0f}, 200 within 1 s "
          f"{in_time:.0f}/{accepted:.0f}")
    assert set(summary["status"]) <= {"200", "503", "504"}, summary
    assert summary["status"].get("200", 0) >= 3 and summary["status"].get("503", 0) >= 20, summary
    assert summary["refused_without_retry_after"] == 0 and summary["client_errors"] == 0
    # the probe (one more caller, its own process, every 100 ms) is refused or answered like the others
    assert probe["requests"] >= 5 and set(probe["status"]) <= {"200", "503", "504"}, probe
    assert probe["refused_without_retry_after"] == 0 and probe["client_errors"] == 0, probe
    refused = summary["status"]["503"] + probe["status"].get("503", 0)
    # on failure, where the slow refusals fell (cumulative counts by bound) says whether the service stalled
    assert total == refused and within >= 0.99 * total, (within, total, refused,
                                                         bench.latency_buckets(metrics, "/translate", "503"))
    # the client's own timings carry its CPU waits on this shared machine; the service's are what it controls
    assert accepted == summary["status"]["200"] + probe["status"].get("200", 0) + 1, (accepted, summary, probe)
    # 80%, not more: the histogram's 1 s bound counts an answer whose decoding ended just inside its 1 s deadline
    # as late once encoding and writing it pass 1.0 s, and with the 10-25 requests accepted here one or two such
    # answers are 5-15% (a full suite on 2 cores: 13 of 15); accepting what cannot be done in time misses far more
    assert in_time >= 0.8 * accepted, (in_time, accepted)
    # and none long after it: a 200 means decoding ended before the deadline, so every one is written by the
    # next bound (2.5 s); a service that let accepted requests run on past their deadline puts some far beyond
    in_bound, _ = bench.answered_within(metrics, "/translate", "200", "2.5")
    assert in_bound == accepted, (in_bound, accepted, bench.latency_buckets(metrics, "/translate", "200"))
    assert summary["status"].get("504", 0) <= 0.1 * summary["requests"], summary


def test_overload_through_grpc_is_unavailable_with_a_retry_after_trailer(server, names):
    """The same flood through the gRPC door, deadline 1 s from the call: UNAVAILABLE + retry-after."""
    bench = benchmark_module("overload_bench")
    result = asyncio.run(bench.drive_grpc(server.grpc_address, names["translation"], clients=16, seconds=4,
                                          deadline_s=1.0))
    codes = {}
    for r in result:
        codes[r["status"]] = codes.get(r["status"], 0) + 1
    assert set(codes) <= {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"} and codes.get("UNAVAILABLE", 0) >= 5, codes
    assert all(r["retry_after"] and int(r["retry_after"]) >= 1 for r in result if r["status"] == "UNAVAILABLE")
