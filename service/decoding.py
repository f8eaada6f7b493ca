"""Continuous batching in the service: one decoding scheduler per translator version.

The request batcher (``service/batcher.py``) runs whole requests: a batch decodes until its
longest sentence ends and a request arriving one step later waits for all of it. This scheduler
runs the decoding loop of ``modelkit.continuous.ContinuousDecoder`` in the model's own thread:
before every decoder step, texts from the queue join the running batch (their encoder pass and
first step together), and a text leaves it the step it ends, its rows freed at once. Greedy and
beam requests share the batch (a beam text takes ``num_beams`` rows).

Limits (``DecodingSettings``): rows and key/value cache bytes of the running batch (a text that
does not fit waits, first come first served), texts waiting (more are refused with 503 and an
estimate of when to retry), and a text that could never fit is refused with 413 naming the
option. A request whose client went away (its ``submit`` was cancelled, its stream closed) or
whose deadline passed (504) leaves the batch at the next step; the freed rows are counted by
reason in ``modelserve_decoding_freed_rows_total``.

Same contract as the batcher: ``submit(items, options) -> results`` with validated items (source
ids), plus ``open_stream`` for server-sent events (``service/streaming.py``). The thread reports
each iteration to the event loop, which answers requests, emits stream pieces and records the
metrics (tokens, rows, time to first token, time per output token, queue wait).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modelkit.continuous import Sequence, round_up, row_capacity

from . import errors, telemetry
from .batcher import Traffic
from .deadlines import current_at as current_deadline
from .errors import ServiceError
from .settings import DecodingSettings

if TYPE_CHECKING:
    from .models import ServedModel

log = logging.getLogger("service.decoding")

CANCELLED, DEADLINE, FINISHED = "cancelled", "deadline", "finished"


@dataclass(eq=False)
class _Item:
    """What the scheduler keeps per text: its request, position, and timings (perf_counter)."""

    request: _Request
    index: int
    queued_step: int = 0  # the engine's step count when it arrived
    joined_step: int | None = None  # and when it joined the running batch
    first_token_at: float | None = None
    admitted_at: float | None = None


class _Request:
    """One submit or stream: its texts' sequences, their results, how it is answered."""

    def __init__(self, seqs: list[Sequence], loop: asyncio.AbstractEventLoop, stream: bool, deadline: float | None):
        self.seqs = seqs
        self.future: asyncio.Future = loop.create_future()
        self.events: asyncio.Queue | None = asyncio.Queue() if stream else None
        self.results: list[dict | None] = [None] * len(seqs)
        self.streamed = [""] * len(seqs)  # text already sent per item
        self.remaining = len(seqs)
        self.enqueued_at = time.perf_counter()
        self.deadline = deadline  # time.monotonic()
        self.stop: str | None = None  # set when it must leave the batch: cancelled or deadline
        self.closed = False  # answered, failed or cancelled: no longer counted as open

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)
            self.future.exception()  # retrieved: a stream may never await it
        if self.events is not None:
            self.events.put_nowait(("error", exc))


@dataclass
class _Report:
    """One iteration of the model thread, for the event loop."""

    joined: list[Sequence] = field(default_factory=list)
    progress: list[tuple[Sequence, int]] = field(default_factory=list)  # streamed greedy texts: tokens so far
    finished: list[tuple[Sequence, float]] = field(default_factory=list)
    dropped: list[tuple[Sequence, str, bool]] = field(default_factory=list)  # (text, reason, it held rows)
    failed: list[tuple[Sequence, BaseException]] = field(default_factory=list)
    stepped_rows: int = 0  # rows in this iteration's decoder step
    rows: int = 0  # rows running after it
    texts: int = 0  # texts running after it
    kv_bytes: int = 0
    busy_s: float = 0.0  # the model thread's time on this iteration


class DecodingScheduler:
    """Continuous batching for one translator version (``model.runtime`` has ``decoder_step``)."""

    def __init__(self, model: ServedModel, settings: DecodingSettings, traffic: Traffic | None = None, *,
                 warmup: bool = True):
        self.model = model
        self.name = f"{model.name}@{model.version}"
        self.runtime = model.runtime
        self.settings = settings
        self.engine = self.runtime.continuous_decoder(max_rows=settings.max_rows)
        self.max_queue_items = settings.max_queue_items
        self.max_batch_size = settings.max_rows  # GET /models shows it
        self.max_wait_s = 0.0
        self.max_kv_bytes = settings.max_kv_bytes
        self.loop: asyncio.AbstractEventLoop | None = None
        self._traffic = traffic or Traffic()
        self._queue: deque[Sequence] = deque()
        self._cv = threading.Condition()
        self._requests: set[_Request] = set()  # requests not answered yet (event loop side)
        self._closed = False
        self._finish_rate = 0.0  # texts finished per second of decoding (moving average): admission, retry_after
        self._rate_busy = 0.0  # model-thread seconds and texts finished since the rate was last folded
        self._rate_count = 0
        self._running_texts = 0
        # iterations the event loop has not delivered yet; while it is not empty a delivery is scheduled
        self._reports: deque[_Report] = deque()
        self._reports_lock = threading.Lock()
        if warmup:
            self.engine.decode([self.runtime.validate("warm up")], num_beams=1, max_new_tokens=2)
            self.engine.decode([self.runtime.validate("warm up")], num_beams=2, max_new_tokens=2)
        self._thread = threading.Thread(target=self._run, name=f"decode-{self.name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the batcher's contract

    @property
    def queued_items(self) -> int:
        return len(self._queue)

    @property
    def idle(self) -> bool:
        return not self._requests

    @property
    def rows(self) -> int:
        return self.engine.rows

    def admit(self, n_items: int, options: dict[str, Any] | None = None, deadline: float | None = None) -> None:
        """Refuse at once (503 + retry_after) when ``n_items`` more would overflow the queue, or when the
        queue ahead, at the recent finishing rate, would outlast the request's deadline (without this,
        a 2 s deadline under overload turned almost every accepted request into a 504)."""
        queued = len(self._queue)
        if queued + n_items > self.max_queue_items:
            retry = self._retry_after(n_items)
            raise ServiceError(503, f"{self.name}: {queued} texts wait to be decoded, limit "
                               f"{self.max_queue_items}; retry in about {retry:.0f} s", field=None,
                               limit=self.max_queue_items, kind=errors.OVERLOAD, retry_after=retry)
        deadline = current_deadline() if deadline is None else deadline
        if deadline is None or not self._finish_rate:
            return
        # the running texts and the queue go first; a rate per second of decoding, not of wall time, so
        # an idle spell does not make a busy model look fast or slow
        ahead = queued + self._running_texts
        wait, left = (ahead + n_items) / self._finish_rate, deadline - time.monotonic()
        if wait > left:
            raise ServiceError(503, f"{self.name}: {queued} texts wait to be decoded, about {wait:.1f} s at the recent "
                               f"{self._finish_rate:.1f} texts/s, and the request's deadline is in {max(left, 0):.1f} s",
                               field=None, limit=self.max_queue_items, kind=errors.OVERLOAD,
                               retry_after=max(1.0, ahead / self._finish_rate))

    async def submit(self, items: list[Any], options: dict[str, Any] | None = None, *, inline: bool = True,
                     deadline: float | None = None) -> list[dict]:
        """Results for validated ``items`` (source ids), in order. Cancelling the call (the client went
        away) takes its texts out of the queue and the running batch. ``inline`` is the request
        batcher's; here decoding always runs in the model thread."""
        if not items:
            return []
        req = self._enqueue(items, options or {}, stream=False, deadline=deadline)
        self._traffic.parked += 1
        try:
            return await asyncio.shield(req.future)
        except asyncio.CancelledError:
            self.cancel(req)
            raise
        finally:
            self._traffic.parked -= 1

    def open_stream(self, items: list[Any], options: dict[str, Any] | None = None, *,
                    deadline: float | None = None) -> TranslationStream:
        """Enqueue now (a full queue is refused here, before any response starts); iterate the
        returned stream for its events."""
        return TranslationStream(self, self._enqueue(items, options or {}, stream=True, deadline=deadline))

    def cancel(self, req: _Request, reason: str = CANCELLED) -> None:
        """Take ``req`` out: its queued texts now, its running ones at the next step."""
        if req.stop is None:
            req.stop = reason
        with self._cv:
            mine = {id(s) for s in req.seqs}
            if any(id(s) in mine for s in self._queue):
                self._queue = deque(s for s in self._queue if id(s) not in mine)
        self._close_request(req)

    async def close(self) -> None:
        """Stop the model thread; requests still open (a drain that timed out) get 503."""
        with self._cv:
            self._closed = True
            self._queue.clear()
            self._cv.notify()
        for req in list(self._requests):
            req.stop = req.stop or CANCELLED
            req.fail(ServiceError(503, f"{self.name} was unloaded before this request finished", kind=errors.OVERLOAD))
            self._close_request(req)

    # ------------------------------------------------------------------ event loop side

    def _enqueue(self, items: list[Any], options: dict[str, Any], *, stream: bool, deadline: float | None) -> _Request:
        if deadline is None:
            deadline = current_deadline()
        self.admit(len(items), deadline=deadline)
        num_beams, max_new_tokens, length_penalty = self.runtime.generation_options(**options)
        if num_beams > self.engine.max_beams():
            raise ServiceError(422, f"num_beams {num_beams} is more than continuous decoding of {self.model.name} "
                               f"takes ({self.engine.max_beams()})", field="num_beams", limit=self.engine.max_beams())
        if num_beams > self.settings.max_rows:
            raise ServiceError(422, f"num_beams {num_beams} needs {num_beams} rows; {self.model.name} decodes at most "
                               f"{self.settings.max_rows} at once", field="num_beams", limit=self.settings.max_rows)
        loop = asyncio.get_running_loop()
        self.loop = loop
        seqs = [Sequence(list(src), num_beams, max_new_tokens, length_penalty) for src in items]
        for s in seqs:
            alone = self.engine.cache.bytes_for(row_capacity(s.rows, self.settings.max_rows),
                                                round_up(s.max_new_tokens + 1), round_up(len(s.source)))
            if alone > self.max_kv_bytes:
                raise ServiceError(413, f"{len(s.source)} source tokens, {num_beams} beams and {max_new_tokens} new "
                                   f"tokens need {alone} bytes of key/value cache; {self.model.name} has "
                                   f"{self.max_kv_bytes}", field="max_new_tokens", limit=self.max_kv_bytes)
        req = _Request(seqs, loop, stream, deadline)
        for i, s in enumerate(seqs):
            s.tag = _Item(req, i, queued_step=self.engine.steps)
        self._requests.add(req)
        with self._cv:
            self._queue.extend(seqs)
            self._cv.notify()
        return req

    def _close_request(self, req: _Request) -> None:
        req.closed = True
        self._requests.discard(req)

    def _deliver(self, report: _Report) -> None:
        """On the event loop: answer, stream and record one iteration of the model thread."""
        try:
            self._deliver_report(report)
        except Exception:  # never leave a request hanging on a bookkeeping bug
            log.exception("%s: delivering decoding results failed", self.name)
            for seq, _ in report.finished:
                seq.tag.request.fail(ServiceError(500, f"{self.name}: internal decoding error"))

    def _deliver_report(self, report: _Report) -> None:
        model, runtime = self.model, self.runtime
        for seq in report.joined:
            item = seq.tag
            if item.first_token_at is None:  # its first step failed (report.failed answers it)
                continue
            telemetry.record_decoding_join(model, item.admitted_at - item.request.enqueued_at,
                                           item.first_token_at - item.request.enqueued_at)
        for seq, n in report.progress:
            self._stream_piece(seq, runtime.detokenize(seq.tokens[:n]))
        done_requests = []
        for seq, finished_at in report.finished:
            item, req = seq.tag, seq.tag.request
            if req.stop is not None:
                continue
            result = runtime.postprocess(([seq.source], None), [seq.result])[0]
            req.results[item.index] = result
            self._stream_piece(seq, result["translation"])
            n_out = len(seq.result.tokens) - (1 if seq.result.finished else 0)
            per_token = (finished_at - item.first_token_at) / (n_out - 1) if n_out > 1 else None
            telemetry.record_decoding_done(model, n_out, per_token)
            req.remaining -= 1
            if req.remaining == 0:
                done_requests.append(req)
        for seq, reason, held_rows in report.dropped:
            if held_rows:
                telemetry.record_freed_rows(model, reason, seq.rows)
            req = seq.tag.request
            if reason == DEADLINE:
                req.fail(ServiceError(504, f"{self.name}: the request's deadline passed while it was decoded",
                                      field="timeout"))
                self._close_request(req)
        for seq, exc in report.failed:
            req = seq.tag.request
            req.stop = req.stop or "failed"
            req.fail(exc)
            self._close_request(req)
        for req in done_requests:
            results = list(req.results)
            if not req.future.done():
                req.future.set_result(results)
            if req.events is not None:
                req.events.put_nowait(("done", results))
            started = min(s.tag.admitted_at for s in req.seqs)
            telemetry.record_decoded_items(model, results, time.perf_counter() - started)
            self._close_request(req)
        self._running_texts = report.texts
        self._count_finished(len(report.finished), report.busy_s)
        telemetry.record_decoding_iteration(model, report.stepped_rows, report.rows, report.kv_bytes)

    def _stream_piece(self, seq: Sequence, text: str) -> None:
        req, i = seq.tag.request, seq.tag.index
        if req.events is None or req.stop is not None:
            return
        sent = req.streamed[i]
        if len(text) > len(sent) and text.startswith(sent):
            req.events.put_nowait(("piece", i, text[len(sent):]))
            req.streamed[i] = text

    def _count_finished(self, n: int, busy_s: float) -> None:
        """Fold finished texts into the rate every 0.5 s of decoding (at the first finished text when none yet)."""
        self._rate_count += n
        self._rate_busy += busy_s
        if self._rate_busy >= 0.5 or (not self._finish_rate and self._rate_count and self._rate_busy > 0):
            rate = self._rate_count / self._rate_busy
            self._finish_rate = rate if not self._finish_rate else 0.7 * self._finish_rate + 0.3 * rate
            self._rate_busy, self._rate_count = 0.0, 0

    def _retry_after(self, n_items: int) -> float:
        """Seconds until the queue has room, from the recent finishing rate (at least 1)."""
        rate = self._finish_rate or 1.0
        return max(1.0, (len(self._queue) + n_items - self.max_queue_items + 1) / rate)

    # ------------------------------------------------------------------ the model thread

    def _run(self) -> None:
        engine = self.engine
        while True:
            report = _Report()
            joining: list[Sequence] = []
            try:
                with self._cv:
                    while not self._closed and not self._queue and engine.rows == 0:
                        self._cv.wait()
                    if self._closed:
                        engine.drop(engine.sequences)
                        return
                    try:
                        joining, expired = self._take()
                    except Exception:  # a bug here must not strand the waiting texts: fail them too
                        joining, expired = list(self._queue), []
                        self._queue.clear()
                        raise
                started = time.perf_counter()
                self._iterate(joining, expired, report)
                report.busy_s = time.perf_counter() - started
            except Exception as exc:  # a failed graph call fails the texts it touched, never the thread
                log.exception("%s: decoding step failed", self.name)
                failing = [s for s in joining + engine.sequences if not s.done]
                engine.drop(engine.sequences)
                err = ServiceError(500, f"model {self.model.name} failed while decoding ({type(exc).__name__}; see the "
                                   "server log)")
                report.failed = [(s, err) for s in failing]
            report.rows, report.texts, report.kv_bytes = engine.rows, len(engine.sequences), engine.cache.nbytes
            if self.loop is not None:
                self._post(report)

    def _post(self, report: _Report) -> None:
        """Queue ``report`` for the event loop, waking it only when no delivery is pending: a wake is a write
        to the loop's self-pipe, during which this thread lets go of the GIL and must then wait for it, once
        per step; while the loop is busy, later steps' reports join the pending delivery."""
        with self._reports_lock:
            pending = bool(self._reports)
            self._reports.append(report)
        if pending:
            return
        try:
            self.loop.call_soon_threadsafe(self._deliver_pending)
        except RuntimeError:  # the event loop closed (the server is stopping)
            pass

    def _deliver_pending(self) -> None:
        """On the event loop: the reports queued so far, in order (a later one schedules its own delivery)."""
        with self._reports_lock:
            reports, self._reports = self._reports, deque()
        for report in reports:
            self._deliver(report)

    def _take(self) -> tuple[list[Sequence], list[Sequence]]:
        """Queued texts that fit the running batch now, first come first served (under the lock)."""
        joining: list[Sequence] = []
        expired: list[Sequence] = []
        now = time.monotonic()
        rows = self.engine.rows
        if self._queue and self.settings.join_waits(rows, len(self._queue),
                                                    self.engine.steps - self._queue[0].tag.queued_step):
            return joining, expired  # a few arrivals wait a step or two for company (see DecodingSettings)
        while self._queue and len(joining) < self.settings.max_join:
            s = self._queue[0]
            req = s.tag.request
            if req.stop is None and req.deadline is not None and now >= req.deadline:
                req.stop = DEADLINE
            if req.stop is not None:
                self._queue.popleft()
                if req.stop == DEADLINE:
                    expired.append(s)
                continue
            if rows + s.rows > self.engine.max_rows or not self.engine.fits(joining + [s], self.max_kv_bytes):
                break
            self._queue.popleft()
            joining.append(s)
            rows += s.rows
        return joining, expired

    def _iterate(self, joining: list[Sequence], expired: list[Sequence], report: _Report) -> None:
        engine = self.engine
        now = time.monotonic()
        leaving = []
        for s in engine.sequences:
            req = s.tag.request
            if req.stop is None and req.deadline is not None and now >= req.deadline:
                req.stop = DEADLINE
            if req.stop is not None:
                leaving.append(s)
        if leaving:
            engine.drop(leaving)
        report.dropped = [(s, s.tag.request.stop, True) for s in leaving] + [(s, DEADLINE, False) for s in expired]
        if joining:
            t = time.perf_counter()
            for s in joining:
                s.tag.admitted_at, s.tag.joined_step = t, engine.steps
            ended = engine.admit(joining)
            t = time.perf_counter()
            if engine.first_token_at_admit:
                for s in joining:
                    s.tag.first_token_at = t
            report.joined = joining
            report.finished += [(s, t) for s in ended]
        if engine.rows:
            report.stepped_rows = engine.rows
            ended = engine.step()
            t = time.perf_counter()
            report.finished += [(s, t) for s in ended]
            for s in joining:  # with encoder_kv the joiners' first token comes from this step
                if s.tag.first_token_at is None:
                    s.tag.first_token_at = t
        report.progress = [(s, len(s.tokens)) for s in engine.sequences
                           if s.beam is None and s.tag.request.events is not None]


class TranslationStream:
    """The events of one streamed request: ``("piece", index, text)`` per new piece of an item's
    text, then ``("done", results)``; an error raises. Closing it early (the client went away)
    cancels the request, whose rows leave the batch at the next step."""

    def __init__(self, scheduler: DecodingScheduler, request: _Request):
        self.scheduler, self.request = scheduler, request

    def __aiter__(self):
        return self._events()

    async def _events(self):
        req = self.request
        self.scheduler._traffic.parked += 1
        try:
            while True:
                event = await req.events.get()
                if event[0] == "error":
                    raise event[1]
                yield event
                if event[0] == "done":
                    return
        finally:
            self.scheduler._traffic.parked -= 1
            if req.remaining and req.stop is None:
                self.scheduler.cancel(req)

    def cancel(self) -> None:
        if self.request.remaining and self.request.stop is None:
            self.scheduler.cancel(self.request)
