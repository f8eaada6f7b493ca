"""The decoding scheduler (service/decoding.py) in process: answers, limits, cancellation, deadlines.

Real smoke translators with the decoder_step graph; the asyncio side runs in the test's event loop
and the model thread is the scheduler's own.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from decoding_support import step_registry  # noqa: F401 (fixture)
from modelkit.registry import load_version
from modelkit.runtimes import create_runtime
from service.decoding import DecodingScheduler
from service.errors import ServiceError
from service.models import ServedModel
from service.settings import DecodingSettings, ServiceSettings
from service.tasks import spec_for
from service_support import smoke_models  # noqa: F401 (fixture)

TEXTS = ["Das Haus ist klein.", "Guten Morgen.", "Wo ist der Bahnhof?", "Ich habe keine Zeit, weil ich arbeiten muss.",
         "Der Hund schläft.", "Öffnen Sie die Datei.", "Ja.", "Das ist ein sehr langer Satz mit vielen Wörtern darin."]


@pytest.fixture(scope="module")
def served(step_registry):
    manifest, vdir = load_version(step_registry, "de-en")
    runtime = create_runtime(manifest, vdir, ServiceSettings(registry=step_registry).session_settings())
    runtime.load()
    return ServedModel(name="de-en", version=manifest.version, status="ready", manifest=manifest, runtime=runtime,
                       spec=spec_for(manifest.task))


def scheduler(served, **settings) -> DecodingScheduler:
    return DecodingScheduler(served, DecodingSettings(**settings), warmup=False)


def ids(served, texts):
    return [served.runtime.validate(t) for t in texts]


def expected(served, texts, num_beams, max_new_tokens):
    rt = served.runtime
    return [rt.detokenize(rt.generate_ids([s], num_beams=num_beams, max_new_tokens=max_new_tokens)[0].tokens)
            for s in ids(served, texts)]


def test_concurrent_mixed_requests_equal_the_batch_decoder(served):
    async def main():
        sched = scheduler(served, max_rows=16)
        calls = [(TEXTS[i % 8:i % 8 + 1 + i % 3], 1 + (i % 2) * 2, 8 + i % 5) for i in range(24)]
        results = await asyncio.gather(*(sched.submit(ids(served, t), {"num_beams": b, "max_new_tokens": m})
                                         for t, b, m in calls))
        assert sched.idle and sched.rows == 0
        await sched.close()
        return calls, results

    calls, results = asyncio.run(main())
    for (texts, beams, max_new), got in zip(calls, results):
        assert [r["translation"] for r in got] == expected(served, texts, beams, max_new)
        assert set(got[0]["features"]) >= {"source_tokens", "generated_tokens", "mean_logprob"}


def test_stream_pieces_add_up_to_the_result(served):
    async def main():
        sched = scheduler(served)
        stream = sched.open_stream(ids(served, TEXTS[:3]), {"num_beams": 1, "max_new_tokens": 20})
        events = [e async for e in stream]
        await sched.close()
        return events

    events = asyncio.run(main())
    assert events[-1][0] == "done"
    results = events[-1][1]
    for i, r in enumerate(results):
        pieces = [e[2] for e in events if e[0] == "piece" and e[1] == i]
        assert "".join(pieces) == r["translation"]
    assert sum(e[0] == "piece" for e in events) > len(results)  # greedy texts arrive piece by piece


def test_cancelled_request_leaves_the_batch_at_the_next_step(served):
    async def main():
        sched = scheduler(served, max_rows=8)
        task = asyncio.ensure_future(sched.submit(ids(served, TEXTS * 4), {"num_beams": 1, "max_new_tokens": 250}))
        other = asyncio.ensure_future(sched.submit(ids(served, TEXTS[:1]), {"num_beams": 1, "max_new_tokens": 8}))
        for _ in range(500):
            await asyncio.sleep(0.002)
            if sched.rows:
                break
        assert sched.rows > 0 and sched.queued_items > 0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert sched.queued_items <= 1  # its waiting texts are gone at once (the other request may wait)
        result = await other  # a request behind it still gets its answer
        for _ in range(500):
            if sched.rows == 0:
                break
            await asyncio.sleep(0.002)
        rows, idle = sched.rows, sched.idle
        await sched.close()
        return result, rows, idle

    result, rows, idle = asyncio.run(main())
    assert result[0]["translation"] == expected(served, TEXTS[:1], 1, 8)[0]
    assert rows == 0 and idle


def test_deadline_stops_decoding_with_504(served):
    async def main():
        sched = scheduler(served, max_rows=4)
        t0 = time.monotonic()
        with pytest.raises(ServiceError) as err:
            await sched.submit(ids(served, TEXTS * 4), {"num_beams": 1, "max_new_tokens": 250}, deadline=t0 + 0.05)
        elapsed = time.monotonic() - t0
        for _ in range(500):
            if sched.rows == 0 and sched.queued_items == 0:
                break
            await asyncio.sleep(0.002)
        state = sched.rows, sched.queued_items, sched.idle
        await sched.close()
        return err.value, elapsed, state

    err, elapsed, state = asyncio.run(main())
    assert err.status == 504 and err.field == "timeout"
    assert elapsed < 2.0
    assert state == (0, 0, True)


def test_full_queue_is_refused_with_retry_after(served):
    async def main():
        sched = scheduler(served, max_rows=2, max_queue_items=4)
        first = asyncio.ensure_future(sched.submit(ids(served, TEXTS[:4]), {"num_beams": 1, "max_new_tokens": 200}))
        await asyncio.sleep(0)
        with pytest.raises(ServiceError) as err:
            await sched.submit(ids(served, TEXTS[:2]), {"num_beams": 1, "max_new_tokens": 5})
        first.cancel()
        await sched.close()
        return err.value

    err = asyncio.run(main())
    assert err.status == 503 and err.limit == 4 and err.kind == "overload"
    retry = err.extra.get("retry_after", getattr(err, "retry_after", None))
    assert retry is not None and retry >= 1


def test_a_queue_that_would_outlast_the_deadline_is_refused_at_once(served):
    async def main():
        sched = scheduler(served, max_rows=2)
        # a measured finishing rate: the texts of one request, decoded one after another
        await sched.submit(ids(served, TEXTS[:4]), {"num_beams": 1, "max_new_tokens": 8})
        rate = sched._finish_rate  # texts per second of decoding, known from the first finished texts
        first = asyncio.ensure_future(sched.submit(ids(served, TEXTS * 4), {"num_beams": 1, "max_new_tokens": 200}))
        await asyncio.sleep(0)
        queued = sched.queued_items
        t0 = time.monotonic()
        with pytest.raises(ServiceError) as err:  # ~30 texts ahead cannot be decoded in a millisecond
            await sched.submit(ids(served, TEXTS[:1]), {"num_beams": 1, "max_new_tokens": 5}, deadline=t0 + 0.001)
        refused_in = time.monotonic() - t0
        roomy = await sched.submit(ids(served, TEXTS[:1]), {"num_beams": 1, "max_new_tokens": 5},
                                   deadline=time.monotonic() + 3600)
        first.cancel()
        await sched.close()
        return rate, queued, err.value, refused_in, roomy

    rate, queued, err, refused_in, roomy = asyncio.run(main())
    assert rate > 0 and queued > 2
    assert err.status == 503 and err.kind == "overload" and err.retry_after >= 1 and "deadline" in err.message
    assert refused_in < 0.05
    assert roomy[0]["translation"] == expected(served, TEXTS[:1], 1, 5)[0]


def test_requests_that_can_never_fit_are_refused(served):
    async def main():
        sched = scheduler(served, max_rows=2, max_kv_bytes=64 * 1024)
        out = []
        for options in ({"num_beams": 4, "max_new_tokens": 5}, {"num_beams": 1, "max_new_tokens": 250}):
            try:
                await sched.submit(ids(served, TEXTS[:1]), options)
            except ServiceError as err:
                out.append(err)
        await sched.close()
        return out

    beams, kv = asyncio.run(main())
    assert beams.status == 422 and beams.field == "num_beams" and beams.limit == 2
    assert kv.status == 413 and kv.field == "max_new_tokens" and kv.limit == 64 * 1024


def test_kv_budget_makes_texts_wait_not_fail(served):
    async def main():
        per_row = DecodingScheduler(served, DecodingSettings(), warmup=False)
        budget = per_row.engine.cache.bytes_for(2, 32, 16) + 1  # about two rows of 20 tokens
        await per_row.close()
        sched = scheduler(served, max_kv_bytes=budget)
        peak = 0

        async def watch():
            nonlocal peak
            while True:
                peak = max(peak, sched.engine.cache.nbytes)
                await asyncio.sleep(0.001)

        watcher = asyncio.ensure_future(watch())
        got = await sched.submit(ids(served, TEXTS[:6]), {"num_beams": 1, "max_new_tokens": 20})
        watcher.cancel()
        await sched.close()
        return got, peak, budget

    got, peak, budget = asyncio.run(main())
    assert [r["translation"] for r in got] == expected(served, TEXTS[:6], 1, 20)
    assert 0 < peak <= budget


def test_close_answers_open_requests(served):
    async def main():
        sched = scheduler(served, max_rows=1)
        task = asyncio.ensure_future(sched.submit(ids(served, TEXTS), {"num_beams": 1, "max_new_tokens": 250}))
        await asyncio.sleep(0.05)
        await sched.close()
        with pytest.raises(ServiceError) as err:
            await task
        return err.value

    assert asyncio.run(main()).status == 503


def test_few_arrivals_wait_a_few_steps_for_company(served):
    async def main():
        sched = scheduler(served, join_min=3, join_wait_steps=4)
        long = asyncio.ensure_future(sched.submit(ids(served, TEXTS[:1]), {"num_beams": 1, "max_new_tokens": 250}))
        while sched.rows == 0 and not long.done():
            await asyncio.sleep(0.001)
        assert not long.done(), "the long text must still be decoding while the others arrive"
        alone = sched.open_stream(ids(served, TEXTS[1:2]), {"num_beams": 1, "max_new_tokens": 5})
        alone_events = [e async for e in alone]
        trio = sched.open_stream(ids(served, TEXTS[2:5]), {"num_beams": 1, "max_new_tokens": 5})
        trio_events = [e async for e in trio]
        waited = [s.tag.joined_step - s.tag.queued_step for s in alone.request.seqs + trio.request.seqs]
        long.cancel()
        await sched.close()
        return waited, alone_events[-1][1], trio_events[-1][1]

    waited, alone, trio = asyncio.run(main())
    assert waited[0] == 4  # one text alone waited join_wait_steps steps
    assert max(waited[1:]) <= 1  # three texts (join_min) joined at the next step
    assert [r["translation"] for r in alone + trio] == expected(served, TEXTS[1:5], 1, 5)


@pytest.mark.parametrize("admit", ["encoder_kv", "first_step_decoder"])
def test_every_joined_text_records_its_first_token_after_its_queue_wait(served, admit, monkeypatch):
    """With encoder_kv a joiner's first token comes from the next shared step, without it from admit's own
    decoder call: either way the answers equal the batch decoder's and each joined text records a
    time to first token no shorter than its queue wait."""
    from service import decoding

    runtime = served.runtime
    if admit == "first_step_decoder":  # a version exported before encoder_kv
        runtime = create_runtime(served.manifest, runtime.version_dir, runtime.settings)
        runtime.load()
        runtime.encoder_kv_session = None
    model = ServedModel(name="de-en", version=served.version, status="ready", manifest=served.manifest,
                        runtime=runtime, spec=served.spec)
    joins = []
    monkeypatch.setattr(decoding.telemetry, "record_decoding_join", lambda m, wait, ttft: joins.append((wait, ttft)))

    async def main():
        sched = scheduler(model, max_rows=8)
        assert sched.engine.first_token_at_admit == (admit == "first_step_decoder")
        calls = [(TEXTS[i % 8:i % 8 + 2], 1 + (i % 2) * 2, 10) for i in range(8)]
        results = await asyncio.gather(*(sched.submit(ids(model, t), {"num_beams": b, "max_new_tokens": m})
                                         for t, b, m in calls))
        await sched.close()
        return calls, results

    calls, results = asyncio.run(main())
    for (texts, beams, max_new), got in zip(calls, results):
        assert [r["translation"] for r in got] == expected(model, texts, beams, max_new)
    assert len(joins) == sum(len(t) for t, _, _ in calls)
    assert all(0 <= wait <= ttft for wait, ttft in joins)


def test_reports_reach_the_loop_in_order_with_one_wake_while_one_is_pending():
    """The model thread wakes the event loop once per pending delivery; reports posted meanwhile ride along."""
    import threading
    from collections import deque

    class Loop:
        def __init__(self):
            self.callbacks = []

        def call_soon_threadsafe(self, fn):
            self.callbacks.append(fn)

    scheduler = DecodingScheduler.__new__(DecodingScheduler)  # the hand-off alone, no model
    scheduler.loop = Loop()
    scheduler._reports, scheduler._reports_lock = deque(), threading.Lock()
    delivered = []
    scheduler._deliver = delivered.append
    for report in ("step 1", "step 2", "step 3"):
        scheduler._post(report)
    assert len(scheduler.loop.callbacks) == 1 and delivered == []
    scheduler.loop.callbacks.pop()()
    assert delivered == ["step 1", "step 2", "step 3"]
    scheduler._post("step 4")  # nothing pending any more: a new wake
    assert len(scheduler.loop.callbacks) == 1
    scheduler.loop.callbacks.pop()()
    assert delivered == ["step 1", "step 2", "step 3", "step 4"]
