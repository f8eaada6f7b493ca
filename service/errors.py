"""Errors every door shares: status, field, limit and kind; each door renders them its own way.

The JSON API answers ``{"error": {status, field, limit, message, ...}}``, the OIP REST door
``{"error": message}`` with the same HTTP status, the gRPC door the status code below. Every
door logs a client error as one line, without a traceback.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("service.requests")

# error kinds counted by modelserve_errors_total (monitoring.metrics.ERROR_KINDS)
VALIDATION, MODEL_FAILURE, OVERLOAD, NOT_FOUND = "validation", "model_failure", "overload", "not_found"
UNAUTHORIZED, RATE_LIMITED, DEADLINE = "unauthorized", "rate_limited", "deadline"

# HTTP status -> gRPC status code name (grpc.StatusCode member)
GRPC_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    413: "RESOURCE_EXHAUSTED",  # what gRPC itself answers for a message over its size limit
    415: "INVALID_ARGUMENT",
    422: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _default_kind(status: int) -> str:
    if status == 404:
        return NOT_FOUND
    if status in (401, 403):
        return UNAUTHORIZED
    if status == 429:
        return RATE_LIMITED
    if status == 504:
        return DEADLINE
    if status >= 500:
        return MODEL_FAILURE
    return VALIDATION


class ServiceError(Exception):
    """A request that cannot be answered: HTTP-style ``status``, the ``field`` at fault and the
    ``limit`` it broke; ``extra`` adds fields to the JSON API's error body.

    ``retry_after`` (seconds) becomes the ``Retry-After`` header (gRPC: ``retry-after`` trailing
    metadata); ``headers`` are further HTTP response headers (``WWW-Authenticate``, ``Connection``).
    """

    def __init__(self, status: int, message: str, *, field: str | None = None, limit: Any = None,
                 kind: str | None = None, retry_after: float | None = None, headers: dict[str, str] | None = None,
                 **extra: Any):
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.limit = jsonable(limit)
        self.kind = kind or _default_kind(status)
        self.retry_after = None if retry_after is None else max(1, math.ceil(retry_after))
        self.headers = dict(headers or {})
        self.extra = extra

    def http_headers(self) -> dict[str, str]:
        """Response headers: ``headers`` plus ``Retry-After`` (whole seconds, at least 1) when set."""
        if self.retry_after is None:
            return self.headers
        return {**self.headers, "Retry-After": str(self.retry_after)}

    def grpc_trailers(self) -> tuple[tuple[str, str], ...]:
        return (("retry-after", str(self.retry_after)),) if self.retry_after is not None else ()

    def body(self) -> dict:
        """The JSON API's error body."""
        err = {"status": self.status, "field": self.field, "limit": self.limit, "message": self.message}
        err.update(self.extra)
        return {"error": err}

    @property
    def grpc_code(self) -> str:
        return GRPC_CODES.get(self.status, "INVALID_ARGUMENT" if self.status < 500 else "INTERNAL")

    def log(self, method: str, target: str) -> None:
        # 4xx are the client's doing: one line, no traceback. 5xx keep their traceback at the raise site.
        level = logging.WARNING if self.status < 500 else logging.ERROR
        log.log(level, "%s %s -> %d field=%s limit=%s: %s", method, target, self.status, self.field, self.limit,
                self.message)


_ABSOLUTE_DIRS = re.compile(r"(?<![\w.~<>-])/(?:[^/\s'\"()\[\]:,<>]+/)+")


def public_text(text: str, root: str | Path | None = None) -> str:
    """``text`` without server paths: ``root/`` removed (``name/version/file`` stays), and the directories
    of any other absolute path dropped (its file name stays)."""
    if root is not None:
        for prefix in {str(Path(root).resolve()), str(root)}:
            text = text.replace(prefix.rstrip("/") + "/", "")
    return _ABSOLUTE_DIRS.sub("", text)


def jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (int, float, str, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value)
