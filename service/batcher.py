"""Per-model asyncio batcher: coalesces items from concurrent requests into model calls.

Why not BentoML's adaptive batching: here it answered 503 when it predicted a deadline
miss, failed every request of a merged batch for one bad item, passed empty lists to
the batch function and logged 4xx with tracebacks (see shared/ENVIRONMENT.md).

Policy: one model call at a time per model, in its own thread (onnxruntime releases
the GIL). A batch leaves when it is full, when ``max_wait_ms`` has passed since its
oldest item arrived, or at once when no other request is on its way to the server's
handlers (waiting could not fill it). Items that arrive while a call runs form the next
batch, so under load batches grow by themselves; that next batch goes to the model thread as soon
as the call ends, before the event loop hands out the answers of the one that ended (the model
does not idle while the loop writes responses). A tiny, fast call with nothing else queued
or arriving runs on the event loop itself (``inline_max_ms``). If a merged call fails, every request
in it is retried alone, so a failure reaches only the request that caused it.

Admission: each model call's seconds per item are measured (per options, e.g. beam width), so the
batcher knows how long its queue will take. A request whose deadline (``service.deadlines``)
cannot be met is refused at once (``Overloaded`` with ``retry_after``: when the queue will have
drained) instead of waiting to time out; a request whose deadline passes while it waits, or
that can no longer finish in time when its batch is taken (the model slowed down), is answered
``DeadlineExceeded`` then, and its items are dropped before inference.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .deadlines import DeadlineExceeded, current_at
from .settings import BatchSettings

log = logging.getLogger("service.batcher")

INLINE_MAX_ITEMS = 4
# admission: the queue's expected time is stretched by this much (the model slows down while the event
# loop answers a flood), and a cost measured this many seconds ago counts half (a flood's inflated
# estimate would otherwise refuse everything and never be measured again)
ESTIMATE_MARGIN = 1.2
ESTIMATE_HALF_LIFE_S = 5.0
DEADLINE_SWEEP_S = 0.02  # how late (at most) a passed deadline is answered

# predict(items, options, queue_wait_seconds_per_request) -> one result per item
PredictFn = Callable[[list[Any], dict[str, Any], list[float]], list[dict]]


class Overloaded(Exception):
    """The model's queue is full, or would not reach this request in time: 503 with Retry-After."""

    def __init__(self, message: str, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class Traffic:
    """Requests inside the app's handlers vs. requests parked in a batcher.

    ``arriving()`` > 0 means some request is being parsed or validated right now and
    may join a batch soon: only then is waiting for it worth anything.
    """

    def __init__(self) -> None:
        self.in_handlers = 0
        self.parked = 0

    def arriving(self) -> int:
        return self.in_handlers - self.parked


@dataclass(eq=False)
class _Job:
    items: list[Any]
    options: dict[str, Any]
    key: tuple
    future: asyncio.Future
    enqueued_at: float
    inline: bool = True  # may run on the event loop (see Batcher._inline_ok)
    deadline: float | None = None  # time.monotonic()
    estimate_s: float = 0.0  # expected model time of its items
    results: list[dict] = field(default_factory=list)


class Batcher:
    """Coalesces ``submit`` calls for one model into ``predict(items, options)`` calls."""

    def __init__(self, name: str, predict: PredictFn, settings: BatchSettings, traffic: Traffic | None = None):
        self.name = name
        self._predict = predict
        self.max_batch_size = settings.max_batch_size
        self.max_wait_s = settings.max_wait_ms / 1000.0
        self.max_queue_items = settings.max_queue_items
        self.inline_max_s = settings.inline_max_ms / 1000.0
        self._small_call_s = float("inf")  # moving average of small calls; unknown until one ran
        self._item_s: dict[tuple, float] = {}  # moving average of model seconds per item, by options
        self._item_s_any = 0.0  # the same over every options key (0: nothing measured yet)
        self._measured_at = 0.0  # when a call last ended (time.monotonic())
        self._queued_s = 0.0  # expected model time of the queued items
        self._busy_until = 0.0  # when the running call is expected to end (time.monotonic())
        self._traffic = traffic or Traffic()
        self._pending: deque[_Job] = deque()
        self._queued_items = 0
        self._busy = False  # a model call (or its bookkeeping) is running
        self._next: tuple[list[_Job], asyncio.Future] | None = None  # a call started before the last one's answers
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._watched: set[_Job] = set()  # jobs with a deadline, not answered yet
        self._sweeper: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # the event loop serving this model (set on first submit)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{name}")

    @property
    def queued_items(self) -> int:
        return self._queued_items

    def item_seconds(self, key: tuple, now: float | None = None) -> float:
        """Expected model seconds per item for options ``key`` (0 until a call was measured), decaying
        while no call is measured."""
        running = self._busy_until != 0.0  # a call is running: its end will be the next measurement
        age = 0.0 if running else (time.monotonic() if now is None else now) - self._measured_at
        return self._item_s.get(key, self._item_s_any) * 0.5 ** (max(0.0, age) / ESTIMATE_HALF_LIFE_S)

    def expected_wait(self, now: float) -> float:
        """Seconds until the queued items will have been through the model."""
        return max(0.0, self._busy_until - now) + self._queued_s

    def admit(self, n_items: int, options: dict[str, Any] | None = None) -> tuple[tuple, float | None, float]:
        """Whether ``n_items`` with ``options`` may join the queue now: (options key, deadline, estimate).

        Raises ``DeadlineExceeded`` when the request's deadline (``service.deadlines.current``) has passed,
        ``Overloaded`` when the queue is full or would not reach these items before the deadline. Cheap:
        the dataplane calls it before validating the items too, so a refusal costs no tokenization.
        """
        key = tuple(sorted((options or {}).items()))
        now = time.monotonic()
        deadline = current_at()
        if deadline is not None and now >= deadline:
            raise DeadlineExceeded(f"{self.name}: the request's deadline passed before it reached the model")
        estimate = n_items * self.item_seconds(key, now)
        wait = self.expected_wait(now)
        if self._queued_items + n_items > self.max_queue_items:
            raise Overloaded(f"{self.name}: {self._queued_items} items queued, limit {self.max_queue_items}",
                             retry_after=wait)
        if deadline is not None and now + ESTIMATE_MARGIN * (wait + estimate) > deadline:
            raise Overloaded(f"{self.name}: about {wait + estimate:.2f} s of work is ahead of this request, "
                             f"its deadline is in {deadline - now:.2f} s", retry_after=wait)
        return key, deadline, estimate

    async def submit(self, items: list[Any], options: dict[str, Any] | None = None, *, inline: bool = True
                     ) -> list[dict]:
        """Results for ``items`` (already validated), in order; raises what the model raised.

        Reads the request's deadline (``service.deadlines.current``): ``Overloaded`` at once when the
        queue would not reach these items in time (``admit``), ``DeadlineExceeded`` when it passes.

        ``inline=False``: never run this request's batch on the event loop. A door whose next requests
        the Traffic count cannot see (gRPC: grpc.aio starts handlers one at a time, each submitting
        without an await) would otherwise have every request run alone on a loop that, while it runs
        the model, accepts no other request (measured at 32 gRPC clients: batches of 1.4 items).
        """
        if not items:
            return []
        options = options or {}
        key, deadline, estimate = self.admit(len(items), options)
        loop = asyncio.get_running_loop()
        self.loop = loop
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._run_forever(), name=f"batcher-{self.name}")
        job = _Job(list(items), options, key, loop.create_future(), loop.time(), inline, deadline, estimate)
        self._pending.append(job)
        self._queued_items += len(items)
        self._queued_s += estimate
        self._traffic.parked += 1
        self._wake.set()
        if deadline is not None:
            self._watch(job)
        try:
            return await job.future
        finally:
            self._traffic.parked -= 1
            self._watched.discard(job)  # the sweeper then only walks requests still waiting

    def _watch(self, job: _Job) -> None:
        """Answer ``job`` 504 when its deadline passes, queued or in a running call (the batcher skips a
        job already answered). One sweeper task per batcher checks every ``DEADLINE_SWEEP_S`` instead
        of a timer and a waiter per request (``asyncio.wait_for``), which cost each request about as
        much as its JSON parsing."""
        self._watched.add(job)
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name=f"deadlines-{self.name}")

    async def _sweep(self) -> None:
        while self._watched:
            await asyncio.sleep(DEADLINE_SWEEP_S)
            now = time.monotonic()
            for job in list(self._watched):
                if job.future.done():
                    self._watched.discard(job)
                elif now >= job.deadline:
                    self._watched.discard(job)
                    job.future.set_exception(DeadlineExceeded(
                        f"{self.name}: the request's deadline passed while it waited ({len(self._pending)} "
                        "requests queued)"))

    async def _run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._next is not None:  # started while the previous call's answers were handed out
                jobs, call = self._next
                self._next = None
                work = self._finish(jobs, call)
            else:
                if not self._pending:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                # Requests whose handlers are ready to run in this loop iteration join first: gRPC handlers
                # submit without awaiting anything, so the Traffic count never shows them arriving.
                await asyncio.sleep(0)
                first = self._pending[0]
                while not self._ready(first, loop.time()):
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), first.enqueued_at + self.max_wait_s - loop.time())
                    except TimeoutError:
                        break
                jobs = self._take(first.key)
                work = self._run_jobs(jobs)
            self._busy = True
            try:
                await work
            except Exception:  # never let the loop die: every job must get an answer
                log.exception("%s: batch bookkeeping failed", self.name)
                self._fail(jobs)
            finally:
                self._busy = False

    def _ready(self, first: _Job, now: float) -> bool:
        """Whether the batch that ``first`` heads leaves now: it is full, ``first`` has waited ``max_wait_ms``,
        or no other request is on its way (waiting could not fill it)."""
        return (self._items_with_key(first.key) >= self.max_batch_size
                or now - first.enqueued_at >= self.max_wait_s
                or self._traffic.arriving() <= 0)

    def _fail(self, jobs: list[_Job]) -> None:
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(RuntimeError(f"{self.name}: internal batching error"))

    def _items_with_key(self, key: tuple) -> int:
        return sum(len(j.items) for j in self._pending if j.key == key)

    def _take(self, key: tuple) -> list[_Job]:
        """FIFO jobs with ``key`` up to max_batch_size items (the first job always)."""
        taken: list[_Job] = []
        kept: deque[_Job] = deque()
        n = 0
        while self._pending:
            job = self._pending.popleft()
            fits = not taken or n + len(job.items) <= self.max_batch_size
            if job.key == key and fits and n < self.max_batch_size:
                taken.append(job)
                n += len(job.items)
            else:
                kept.append(job)
        self._pending = kept
        self._queued_items -= n
        self._queued_s = max(0.0, self._queued_s - sum(j.estimate_s for j in taken)) if self._pending else 0.0
        return taken

    def _live(self, jobs: list[_Job]) -> list[_Job]:
        """The jobs still worth running: a request that cannot finish before its deadline is answered now."""
        now = time.monotonic()
        for job in jobs:  # a request that cannot finish before its deadline needs no inference
            if job.deadline is None or job.future.done():
                continue
            if job.deadline <= now:
                job.future.set_exception(DeadlineExceeded(f"{self.name}: the request's deadline passed in the queue"))
            elif now + len(job.items) * self.item_seconds(job.key, now) > job.deadline:
                # the model slowed down since it was admitted: answer now and give its time to the others
                job.future.set_exception(DeadlineExceeded(
                    f"{self.name}: the request's deadline will pass before its items are through the model"))
        return [j for j in jobs if not j.future.done()]  # a cancelled or expired request needs no inference

    def _call_args(self, live: list[_Job]) -> tuple[list[Any], dict[str, Any], list[float], tuple]:
        """``_call``'s arguments for ``live``'s items; marks the model busy for their expected time."""
        now = asyncio.get_running_loop().time()
        self._busy_until = time.monotonic() + sum(j.estimate_s for j in live)
        return [it for j in live for it in j.items], live[0].options, [now - j.enqueued_at for j in live], live[0].key

    def _start(self, live: list[_Job]) -> asyncio.Future:
        """``live``'s items to the model thread; the future of their results."""
        return asyncio.get_running_loop().run_in_executor(self._executor, self._call, *self._call_args(live))

    async def _run_jobs(self, jobs: list[_Job]) -> None:
        live = self._live(jobs)
        if not live:
            return
        n_items = sum(len(j.items) for j in live)
        if self._inline_ok(n_items) and all(j.inline for j in live):
            try:
                results = self._call(*self._call_args(live))
            except Exception as exc:
                self._busy_until = 0.0
                await self._failed(live, exc)
                return
            self._busy_until = 0.0
            self._answer(live, results)
            return
        await self._finish(live, self._start(live))

    async def _finish(self, live: list[_Job], call: asyncio.Future) -> None:
        """Wait for ``call`` (``live``'s model call), start the next batch, then hand out the answers."""
        try:
            results = await call
        except Exception as exc:
            self._busy_until = 0.0
            await self._failed(live, exc)
            return
        self._busy_until = 0.0
        self._start_next()
        self._answer(live, results)

    def _start_next(self) -> None:
        """Under load the next batch is already queued when a call ends: start it now, before this call's
        answers are handed out (writing them keeps the event loop busy for about as long as the model
        call). Only a batch ``_ready`` would take at once."""
        if not self._pending or self._next is not None:
            return
        first = self._pending[0]
        if not self._ready(first, asyncio.get_running_loop().time()):
            return
        live = self._live(self._take(first.key))
        if live:
            self._next = (live, self._start(live))

    def _answer(self, live: list[_Job], results: list[dict]) -> None:
        start = 0
        for job in live:
            part = results[start : start + len(job.items)]
            start += len(job.items)
            if not job.future.done():
                job.future.set_result(part)

    async def _failed(self, live: list[_Job], exc: Exception) -> None:
        """A merged call failed: every request in it is retried alone, so only its cause gets the error."""
        if len(live) == 1:
            if not live[0].future.done():
                live[0].future.set_exception(exc)
            return
        log.warning("%s: merged batch of %d requests failed (%s); retrying each alone", self.name, len(live), exc)
        for job in live:
            await self._run_jobs([job])

    def _inline_ok(self, n_items: int) -> bool:
        """Run on the event loop itself: a small, fast call while nothing else is queued or arriving.

        Skips two thread hand-offs (to the model thread and back), which on a busy machine
        cost more than the call itself; anything slower or concurrent goes to the model thread.
        """
        return (
            n_items <= INLINE_MAX_ITEMS
            and self._small_call_s <= self.inline_max_s
            and not self._pending
            and self._traffic.arriving() <= 0
        )

    def _call(self, items: list[Any], options: dict[str, Any], waits: list[float], key: tuple = ()) -> list[dict]:
        """Model calls of at most max_batch_size items (in the model's thread, or inline when tiny)."""
        t0 = time.perf_counter()
        out = self._call_chunks(items, options, waits)
        seconds = time.perf_counter() - t0
        if len(items) <= INLINE_MAX_ITEMS:
            previous = self._small_call_s
            self._small_call_s = seconds if previous == float("inf") else 0.8 * previous + 0.2 * seconds
        per_item = seconds / len(items)
        previous = self._item_s.get(key)
        self._item_s[key] = per_item if previous is None else 0.8 * previous + 0.2 * per_item
        self._item_s_any = per_item if not self._item_s_any else 0.8 * self._item_s_any + 0.2 * per_item
        self._measured_at = time.monotonic()
        return out

    def _call_chunks(self, items: list[Any], options: dict[str, Any], waits: list[float]) -> list[dict]:
        out: list[dict] = []
        for i in range(0, len(items), self.max_batch_size):
            chunk = items[i : i + self.max_batch_size]
            results = self._predict(chunk, options, waits if i == 0 else [])
            if len(results) != len(chunk):
                raise RuntimeError(f"{self.name}: model returned {len(results)} results for {len(chunk)} items")
            out.extend(results)
        return out

    @property
    def idle(self) -> bool:
        """Nothing queued and no model call running."""
        return not self._pending and not self._busy and self._next is None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
