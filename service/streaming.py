"""Translations as server-sent events, and requests that end when their client goes away.

``POST /translate`` with ``"stream": true`` and the OIP generate extension's ``generate_stream``
answer ``text/event-stream``: one event per new piece of an item's text as the decoding scheduler
(``service/decoding.py``) produces it, then one event with the full answer. Checks run before the
response starts, so a bad request still gets its 4xx and a full queue its 503; an error after that
is an error event. Versions served by the request batcher (exported before ``decoder_step``) stream
one final event. A client that disconnects closes its stream: its rows leave the running batch at
the next decoder step. A client of a plain request that disconnects gets its request cancelled
too (``unless_disconnected``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import StreamingResponse

from . import dataplane
from .errors import ServiceError
from .worker import Route, Worker

log = logging.getLogger("service.streaming")

T = TypeVar("T")
CLIENT_CLOSED = 499  # nginx's "client closed request": the client went away before the answer
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

# ("piece", index, text) | ("done", results)
Event = tuple


def sse(data: Mapping[str, Any], event: str | None = None) -> bytes:
    """One server-sent event (``event:`` line optional, one JSON ``data:`` line)."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'), ensure_ascii=False)}\n\n".encode()


def event_stream(chunks: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(chunks, media_type="text/event-stream", headers=SSE_HEADERS)


async def open_translation(worker: Worker, route: Route, items: Sequence[Any], given: Mapping[str, Any], *,
                           field: str) -> tuple[AsyncIterator[Event], dict[str, Any]]:
    """The dataplane's checks (item count, options, item validation, queue), then the events.

    Raises ``ServiceError`` before any event for what ``dataplane.infer`` would refuse.
    """
    model = route.model
    worker.check_count(len(items), field)
    options = model.spec.resolve_options(model.manifest, given)
    valid = dataplane.validate_items(model, items, field)
    runtime_options = model.spec.runtime_options(model.manifest, options)
    open_stream = getattr(model.batcher, "open_stream", None)
    if open_stream is not None:
        stream = open_stream(valid, runtime_options)
        return _accounted(route, aiter(stream), stream.cancel), options
    # the request batcher: the whole answer at once
    return _accounted(route, _whole(model, valid, runtime_options), lambda: None), options


async def _whole(model, items: list[Any], options: dict[str, Any]) -> AsyncIterator[Event]:
    results = await dataplane.predict(model, items, options)
    for i, r in enumerate(results):
        yield ("piece", i, r["translation"])
    yield ("done", results)


async def _accounted(route: Route, events: AsyncIterator[Event], cancel: Callable[[], None]) -> AsyncIterator[Event]:
    """The version's in-flight count and request metrics around a stream (a replaced version waits for it)."""
    with dataplane.VersionRequest(route, CLIENT_CLOSED) as request:
        try:
            async for event in events:
                yield event
                if event[0] == "done":
                    request.status = 200
        finally:
            await _close(events)
            cancel()  # a stream closed before its end (also one never iterated) leaves the batch


async def _close(events: AsyncIterator[Event]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()


async def render(events: AsyncIterator[Event], piece: Callable[[int, str], bytes],
                 done: Callable[[list[dict]], bytes], error: Callable[[ServiceError], bytes]) -> AsyncIterator[bytes]:
    """Events as server-sent event bytes; an error after the response started becomes an error event."""
    try:
        async for event in events:
            yield piece(event[1], event[2]) if event[0] == "piece" else done(event[1])
    except ServiceError as err:
        err.log("POST", "(stream)")
        yield error(err)
    except Exception:
        log.exception("stream failed")
        yield error(ServiceError(500, "internal error, see the server log"))
    finally:
        await _close(events)


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """``work``'s result, or 499 once the client disconnects (``work`` is cancelled: a decoding
    request leaves the queue or the running batch). Call after the body was read."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watch.cancel()
    if task in done:
        return task.result()
    task.cancel()
    raise ServiceError(CLIENT_CLOSED, "the client closed the connection before the answer", field=None)


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
