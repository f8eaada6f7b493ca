"""Shadow traffic: a sample of requests also goes to a candidate version after the primary answered.

The client never waits for it. Each mirrored request's candidate answers are compared with the
primary's, item by item, with the task's own notion of agreement (same top label, same label set,
same translation: ``TaskSpec.agrees``), and counted; the candidate's latency is recorded like any
version's, with ``route="shadow"``.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from . import telemetry
from .errors import ServiceError

if TYPE_CHECKING:
    from .worker import Route, Worker

log = logging.getLogger("service.shadow")


def mirror(worker: "Worker", route: "Route", items: list[Any], options: dict[str, Any], primary: list[dict],
           field: str) -> None:
    """Send ``items`` to ``route.shadow`` in the background and record the agreement with ``primary``.

    Skipped (and counted) while the candidate already has a full batch waiting: mirrored traffic
    must never pile up behind a slow candidate and take the machine from the primary.
    """
    candidate = route.shadow
    if candidate.batcher is None or candidate.batcher.queued_items >= candidate.batcher.max_batch_size:
        telemetry.record_shadow_skipped(route.model, candidate, len(items))
        return
    worker.background(_compare(route, items, options, primary, field))


async def _compare(route: "Route", items: list[Any], options: dict[str, Any], primary: list[dict], field: str) -> None:
    from .dataplane import validate_items, predict  # the same path as a client's request

    candidate = route.shadow
    candidate.in_flight += 1
    t0 = time.perf_counter()
    status = 500
    try:
        valid = validate_items(candidate, items, field)
        results = await predict(candidate, valid, candidate.spec.runtime_options(candidate.manifest, options))
        status = 200
        agree = sum(candidate.spec.agrees(p, c) for p, c in zip(primary, results))
        telemetry.record_shadow(route.model, candidate, agree, len(results) - agree)
    except ServiceError as err:
        status = err.status
        log.warning("shadow call to %s@%s failed: %s", candidate.name, candidate.version, err.message)
    except Exception:
        log.exception("shadow call to %s@%s failed", candidate.name, candidate.version)
    finally:
        candidate.in_flight -= 1
        telemetry.record_version_request(candidate, "shadow", status, time.perf_counter() - t0)
