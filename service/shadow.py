"""Shadow traffic: a sample of requests also goes to a candidate version after the primary answered.

The client never waits for it. Mirrored requests wait up to ``shadow_wait_ms`` to share one model
call of the candidate (in its own thread, never on the event loop): the primary's requests must
not pay for the shadow, and one call per mirrored request costs several times the items' own time.
Each mirrored request's candidate answers are compared with the primary's, item by item, with the
task's own notion of agreement (same top label, same label set, same translation:
``TaskSpec.agrees``), and counted; the candidate's latency is recorded like any version's, with
``route="shadow"``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import telemetry
from .errors import ServiceError

if TYPE_CHECKING:
    from .models import ServedModel
    from .worker import Route, Worker

log = logging.getLogger("service.shadow")


@dataclass
class _Mirrored:
    """One mirrored request: its route, the items, the primary's answers, and when it was mirrored."""

    route: "Route"
    items: list[Any]
    options: dict[str, Any]
    primary: list[dict]
    field: str
    at: float


class ShadowSender:
    """The mirrored requests of one worker, gathered per candidate and sent in shared model calls."""

    def __init__(self, worker: "Worker", wait_s: float):
        self.worker = worker
        self.wait_s = wait_s
        self._pending: dict[int, list[_Mirrored]] = {}  # id(candidate) -> waiting requests

    def mirror(self, route: "Route", items: list[Any], options: dict[str, Any], primary: list[dict],
               field: str) -> None:
        """Queue ``items`` for ``route.shadow``; skipped (and counted) while the candidate is behind.

        Mirrored traffic must never pile up behind a slow candidate and take the machine from the primary.
        """
        candidate = route.shadow
        pending = self._pending.get(id(candidate))
        waiting = sum(len(m.items) for m in pending) if pending else 0
        batcher = candidate.batcher
        if batcher is None or batcher.queued_items + waiting >= 2 * batcher.max_batch_size:
            telemetry.record_shadow_skipped(route.model, candidate, len(items))
            return
        if pending is None:
            pending = self._pending[id(candidate)] = []
            if self.wait_s:
                asyncio.get_running_loop().call_later(self.wait_s, self._flush, candidate)
        pending.append(_Mirrored(route, items, options, primary, field, time.perf_counter()))
        if not self.wait_s or waiting + len(items) >= batcher.max_batch_size:
            self._flush(candidate)

    def _flush(self, candidate: "ServedModel") -> None:
        pending = self._pending.pop(id(candidate), None)
        if pending:
            self.worker.background(_compare(candidate, pending))


async def _compare(candidate: "ServedModel", mirrored: list[_Mirrored]) -> None:
    """Every mirrored request at once: the candidate's batcher merges them into shared model calls
    (and retries a failing merged call request by request)."""
    candidate.in_flight += 1
    try:
        await asyncio.gather(*(_compare_one(candidate, m) for m in mirrored))
    finally:
        candidate.in_flight -= 1


async def _compare_one(candidate: "ServedModel", m: _Mirrored) -> None:
    from .dataplane import predict, validate_items  # the same path as a client's request

    status = 500
    try:
        valid = validate_items(candidate, m.items, m.field)
        # never on the event loop: the primary's requests must not wait behind mirrored work
        results = await predict(candidate, valid, candidate.spec.runtime_options(candidate.manifest, m.options),
                                inline=False)
        status = 200
        agree = sum(candidate.spec.agrees(p, c) for p, c in zip(m.primary, results))
        telemetry.record_shadow(m.route.model, candidate, agree, len(results) - agree)
    except ServiceError as err:
        status = err.status
        log.warning("shadow call to %s@%s failed: %s", candidate.name, candidate.version, err.message)
    except Exception:
        log.exception("shadow call to %s@%s failed", candidate.name, candidate.version)
    finally:
        telemetry.record_version_request(candidate, "shadow", status, time.perf_counter() - m.at)
