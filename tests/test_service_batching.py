"""Batching: the batcher's rules in-process, then concurrent requests against the real service."""

from __future__ import annotations

import asyncio
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from service.batcher import Batcher, Overloaded, Traffic
from service.settings import BatchSettings
from service_support import names_by_task, serve, smoke_models  # noqa: F401 (fixture)

# ---- the batcher on its own (a plain function stands in for the model: the rules are what is tested) ----


class Recorder:
    """A predict function that records its batches and fails on items equal to "boom"."""

    def __init__(self, delay: float = 0.0):
        self.batches: list[list] = []
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, items, options, waits):
        import time

        time.sleep(self.delay)
        with self.lock:
            self.batches.append(list(items))
        if "boom" in items:
            raise RuntimeError("boom in batch")
        return [{"echo": it, **options} for it in items]


def _run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_batches_and_keep_order():
    rec = Recorder(delay=0.02)
    traffic = Traffic()
    batcher = Batcher("m", rec, BatchSettings(max_batch_size=8, max_wait_ms=50), traffic)

    async def main():
        traffic.in_handlers += 10  # ten requests are "in the handlers", so waiting for them is worth it
        try:
            return await asyncio.gather(*(batcher.submit([f"r{i}a", f"r{i}b"]) for i in range(10)))
        finally:
            traffic.in_handlers -= 10

    results = _run(main())
    assert [[r["echo"] for r in res] for res in results] == [[f"r{i}a", f"r{i}b"] for i in range(10)]
    assert max(len(b) for b in rec.batches) == 8  # coalesced up to the limit
    assert all(len(b) <= 8 for b in rec.batches)


def test_no_wait_when_nobody_else_is_arriving():
    rec = Recorder()
    batcher = Batcher("m", rec, BatchSettings(max_batch_size=8, max_wait_ms=1000), Traffic())

    async def main():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await batcher.submit(["x"])
        return loop.time() - t0

    assert _run(main()) < 0.5  # did not sit out the 1 s max wait


def test_next_batch_goes_to_the_model_before_the_last_answers_are_handed_out():
    """Under load the queued batch starts as soon as a call ends, not after the event loop has written the
    answers of the call that ended (the model thread would idle meanwhile)."""
    events: list[str] = []
    release = threading.Event()

    class Recording(ThreadPoolExecutor):
        def submit(self, fn, *args, **kwargs):  # loop.run_in_executor -> submit(self._call, items, ...)
            events.append(f"model call {args[0][0]}")
            return super().submit(fn, *args, **kwargs)

    def predict(items, options, waits):
        if items[0] == "first":
            release.wait(5)
        return [{"echo": it} for it in items]

    batcher = Batcher("m", predict, BatchSettings(max_batch_size=8, max_wait_ms=1), Traffic())
    batcher._executor = Recording(max_workers=1)

    async def client(item):
        await batcher.submit([item])
        events.append(f"answered {item}")

    async def main():
        first = asyncio.create_task(client("first"))
        await asyncio.sleep(0.05)  # "first" is in the model call, blocked
        queued = [asyncio.create_task(client(f"next{i}")) for i in range(3)]
        await asyncio.sleep(0.05)  # these wait for the model
        release.set()
        await asyncio.gather(first, *queued)

    _run(main())
    assert events.index("model call next0") < events.index("answered first"), events
    assert sorted(e for e in events if e.startswith("answered")) == ["answered first"] + [
        f"answered next{i}" for i in range(3)]


def test_failure_in_merged_batch_reaches_only_its_request():
    rec = Recorder(delay=0.01)
    traffic = Traffic()
    batcher = Batcher("m", rec, BatchSettings(max_batch_size=16, max_wait_ms=50), traffic)

    async def main():
        traffic.in_handlers += 4
        try:
            return await asyncio.gather(batcher.submit(["a"]), batcher.submit(["boom"]), batcher.submit(["b", "c"]),
                                        batcher.submit(["d"]), return_exceptions=True)
        finally:
            traffic.in_handlers -= 4

    a, boom, bc, d = _run(main())
    assert isinstance(boom, RuntimeError)
    assert [r["echo"] for r in a] == ["a"] and [r["echo"] for r in bc] == ["b", "c"] and [r["echo"] for r in d] == ["d"]
    assert any(len(b) > 1 and "boom" in b for b in rec.batches)  # it was merged first, then retried alone


def test_different_options_never_share_a_batch():
    rec = Recorder(delay=0.01)
    traffic = Traffic()
    batcher = Batcher("m", rec, BatchSettings(max_batch_size=16, max_wait_ms=50), traffic)

    async def main():
        traffic.in_handlers += 4
        try:
            return await asyncio.gather(*(batcher.submit([f"x{i}"], {"num_beams": i % 2 + 1}) for i in range(4)))
        finally:
            traffic.in_handlers -= 4

    results = _run(main())
    assert [r[0]["num_beams"] for r in results] == [1, 2, 1, 2]
    for batch in rec.batches:
        assert len({int(x[1:]) % 2 for x in batch}) == 1


def test_large_request_is_split_into_max_batch_chunks_and_empty_is_no_call():
    rec = Recorder()
    batcher = Batcher("m", rec, BatchSettings(max_batch_size=4, max_wait_ms=0), Traffic())
    out = _run(batcher.submit(list(range(10))))
    assert [r["echo"] for r in out] == list(range(10))
    assert [len(b) for b in rec.batches] == [4, 4, 2]
    assert _run(batcher.submit([])) == [] and len(rec.batches) == 3


def test_queue_limit_raises_overloaded():
    rec = Recorder(delay=0.2)
    batcher = Batcher("m", rec, BatchSettings(max_batch_size=2, max_wait_ms=0, max_queue_items=3), Traffic())

    async def main():
        first = asyncio.ensure_future(batcher.submit(["a", "b"]))
        await asyncio.sleep(0.05)  # the first call is running; the queue is empty again
        queued = asyncio.ensure_future(batcher.submit(["c", "d", "e"]))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await batcher.submit(["f"])
        return await first, await queued

    first, queued = _run(main())
    assert len(first) == 2 and len(queued) == 3


# ---- the real service under concurrent load ---------------------------------------------------


@pytest.fixture(scope="module")
def server(smoke_models: Path, tmp_path_factory):
    env = {"SERVICE_DEFAULT_BATCH__MAX_WAIT_MS": "20"}  # generous wait: coalescing must be visible here
    with serve(smoke_models, tmp_path_factory.mktemp("serve_batching"), env=env) as srv:
        yield srv


def test_bad_item_in_concurrent_requests_fails_only_its_request(server, smoke_models):
    name = names_by_task(smoke_models)["text-classification"]
    texts = [[f"request {i} text {j} is fine" for j in range(3)] for i in range(24)]
    bad_index = 11
    texts[bad_index][1] = "x" * 100_000  # over max_text_chars

    with httpx.Client(base_url=server.url, timeout=60) as c:
        alone = {i: c.post("/classify", json={"model": name, "texts": t, "top_k": 2}).json()
                 for i, t in enumerate(texts) if i != bad_index}
        before = _batch_stats(c.get("/metrics").text, name)

        def call(i):
            return c.post("/classify", json={"model": name, "texts": texts[i], "top_k": 2})

        with ThreadPoolExecutor(max_workers=24) as pool:
            responses = list(pool.map(call, range(24)))
        after = _batch_stats(c.get("/metrics").text, name)

    for i, resp in enumerate(responses):
        if i == bad_index:
            assert resp.status_code == 422 and resp.json()["error"]["field"] == "texts[1]", resp.text
        else:
            assert resp.status_code == 200, resp.text
            got, want = resp.json()["results"], alone[i]["results"]
            assert [[lab["label"] for lab in r["labels"]] for r in got] == \
                [[lab["label"] for lab in r["labels"]] for r in want]
            for g, w in zip(got, want):
                for gl, wl in zip(g["labels"], w["labels"]):
                    assert abs(gl["score"] - wl["score"]) < 1e-5
    rows, calls = after[0] - before[0], after[1] - before[1]
    assert rows == 23 * 3
    assert calls < 23, f"{calls} model calls for 23 concurrent requests: nothing was coalesced"


def _batch_stats(metrics_text: str, model: str) -> tuple[float, float]:
    def value(kind: str) -> float:
        m = re.search(rf'modelserve_batch_size_rows_{kind}\{{model="{re.escape(model)}",version="[^"]+"\}} (\S+)',
                      metrics_text)
        return float(m.group(1)) if m else 0.0

    return value("sum"), value("count")
