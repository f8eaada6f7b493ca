"""Request deadlines: the client's timeout, or the endpoint's default, as one absolute time.

Doors set ``current`` (a ``Deadline`` on the ``time.monotonic()`` clock) before calling the
dataplane; the batcher reads it to refuse at once what cannot finish in time (503 +
Retry-After), to drop queued items whose time has passed (504), and to answer 504 when a
request's time runs out while it waits.

Where the timeout comes from: the ``X-Request-Timeout`` header (seconds, HTTP doors), the OIP
``timeout`` request parameter (microseconds, as Triton and ``tritonclient`` define it), the gRPC
deadline (``grpc.aio`` context). A client may ask for less or more than the default, up to
``max_s``.
"""

from __future__ import annotations

import contextvars
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ServiceError

HEADER = "x-request-timeout"


@dataclass
class Deadline:
    """One request's deadline: ``at`` (``time.monotonic()``), from its start and the rules' ``max_s``."""

    start: float
    at: float
    max_s: float
    asked: bool  # the client named a timeout (header or gRPC deadline)

    def ask(self, seconds: float) -> None:
        """A timeout found later (the OIP ``timeout`` parameter): the sooner one wins when both were given."""
        at = self.start + min(seconds, self.max_s)
        self.at = min(self.at, at) if self.asked else at
        self.asked = True


current: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar("modelserve_deadline", default=None)


class Deadlines:
    """The deadline rules (``DeadlineSettings``) of one worker."""

    def __init__(self, settings):
        self.default_s = settings.default_s
        self.endpoints = dict(settings.endpoints)
        self.max_s = settings.max_s

    def budget(self, endpoint: str, requested_s: float | None) -> float:
        """Seconds a request may take: the client's ask (at most ``max_s``), else the endpoint's default."""
        if requested_s is None:
            return self.endpoints.get(endpoint, self.default_s)
        return min(requested_s, self.max_s)

    def start(self, endpoint: str, requested_s: float | None, now: float | None = None) -> Deadline:
        """Set ``current`` for this request and return it."""
        now = time.monotonic() if now is None else now
        deadline = Deadline(now, now + self.budget(endpoint, requested_s), self.max_s, requested_s is not None)
        current.set(deadline)
        return deadline


def parse_seconds(value: str, field: str = "X-Request-Timeout") -> float:
    """A positive number of seconds; 400 naming ``field`` otherwise."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise ServiceError(400, f"{field} must be a positive number of seconds, got {str(value)[:20]!r}",
                           field=field, limit="> 0")
    return seconds


def from_headers(headers: Mapping[str, str]) -> float | None:
    value = headers.get(HEADER)
    return None if value is None else parse_seconds(value)


def from_parameters(parameters: Mapping[str, Any]) -> float | None:
    """The OIP ``timeout`` request parameter (microseconds) in seconds, or None."""
    value = parameters.get("timeout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ServiceError(422, f"parameters.timeout must be a positive number of microseconds, got {value!r}"[:200],
                           field="parameters.timeout", limit="> 0")
    return value / 1e6


def apply_parameters(parameters: Mapping[str, Any]) -> None:
    """The OIP ``timeout`` parameter onto the current deadline (no deadline set: nothing to do)."""
    seconds = from_parameters(parameters)
    deadline = current.get()
    if seconds is not None and deadline is not None:
        deadline.ask(seconds)


def current_at() -> float | None:
    """The current request's deadline (``time.monotonic()``), or None."""
    deadline = current.get()
    return None if deadline is None else deadline.at


class DeadlineExceeded(Exception):
    """The request's deadline passed before its items were inferred (504)."""
