"""The HTTP doors' responses: JSON bodies encoded with orjson, sent as two ASGI messages.

Starlette's ``Response`` builds and checks its headers per instance and handles background tasks;
a door's answer needs none of that, and one request's share of it was measurable next to a small
model (benchmarks/RESULTS.md). ``RawResponse`` stays a ``Response`` so the FastAPI app, which
serves the same handlers for the OpenAPI page, passes it through unchanged.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

JSON = b"application/json"


class RawResponse(Response):
    """A complete body with its status, content type and extra headers."""

    def __init__(self, body: bytes, status_code: int = 200, media_type: bytes = JSON,
                 headers: dict[str, str] | None = None, raw_headers: list[tuple[bytes, bytes]] | None = None):
        self.status_code = status_code
        self.body = body
        self.background = None
        raw = [(b"content-type", media_type), (b"content-length", str(len(body)).encode())]
        if headers:
            raw.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())
        if raw_headers:  # already lower-case names and encoded values
            raw.extend(raw_headers)
        self.raw_headers = raw

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body})


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> RawResponse:
    return RawResponse(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), status, JSON, headers)
