"""Client-facing errors: one JSON shape naming the field and the limit, logged as one line."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelkit.runtimes import InputError

log = logging.getLogger("service.requests")


class ApiError(Exception):
    """An error answered as ``{"error": {"status", "field", "limit", "message", ...}}``."""

    def __init__(self, status: int, message: str, *, field: str | None = None, limit: Any = None, **extra: Any):
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.limit = limit
        self.extra = extra

    def body(self) -> dict:
        err = {"status": self.status, "field": self.field, "limit": self.limit, "message": self.message}
        err.update(self.extra)
        return {"error": err}

    @classmethod
    def from_input_error(cls, exc: InputError, *, prefix: str = "") -> "ApiError":
        field = f"{prefix}.{exc.field}" if prefix and exc.field else (exc.field or prefix or None)
        return cls(exc.status, str(exc), field=field, limit=_jsonable(exc.limit))


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (int, float, str, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def _log_one_line(request: Request, err: ApiError) -> None:
    # 4xx are the client's doing: one line, no traceback. 5xx keep their traceback at the raise site.
    level = logging.WARNING if err.status < 500 else logging.ERROR
    log.log(level, "%s %s -> %d field=%s limit=%s: %s", request.method, request.url.path, err.status,
            err.field, err.limit, err.message)


def error_response(request: Request, err: ApiError) -> JSONResponse:
    _log_one_line(request, err)
    return JSONResponse(err.body(), status_code=err.status)


async def api_error_handler(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(request, exc)


async def validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    """Pydantic body errors -> 422 naming the first bad field and its limit."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    field = ".".join(loc) or "body"
    ctx = first.get("ctx") or {}
    limit = next((ctx[k] for k in ("le", "ge", "lt", "gt", "max_length", "min_length", "expected") if k in ctx), None)
    status = 422
    if first.get("type") == "json_invalid":
        field = "body"
    err = ApiError(status, first.get("msg", "invalid request"), field=field, limit=_jsonable(limit),
                   errors=[{"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"), "message": e.get("msg")}
                           for e in errors[:10]])
    return error_response(request, err)


async def http_error_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error_response(request, ApiError(exc.status_code, str(exc.detail), field=None))
