"""The transport-agnostic request path every door calls: options, item checks, batching, results.

A door decodes its wire format into a model, items and raw options, calls ``infer``, and encodes
the results its own way; everything in between (bounds, item limits, validation, the batcher,
the errors) happens here, once, whatever the protocol.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import numpy as np

from modelkit.runtimes import InputError

from . import auth, telemetry
from .batcher import Overloaded
from .deadlines import DeadlineExceeded
from .errors import ServiceError
from .models import ServedModel
from .worker import Route, Worker

log = logging.getLogger("service.dataplane")

OFFLOAD_VALIDATION_BYTES = 256 * 1024  # decode big uploads in a thread, not on the event loop
_GENERIC_ITEM_FIELDS = {None, "", "text", "texts", "image", "images", "item", "source"}


def item_field(prefix: str, index: int, exc: InputError) -> str:
    """``texts[3]``, or ``texts[3].sub`` when the runtime names a part of the item."""
    base = f"{prefix}[{index}]"
    return base if exc.field in _GENERIC_ITEM_FIELDS else f"{base}.{exc.field}"


def validate_items(model: ServedModel, items: Sequence[Any], prefix: str) -> list[Any]:
    """Each item through the runtime's ``validate``; the first bad one is a 4xx naming it."""
    validate = model.runtime.validate
    out = []
    for i, item in enumerate(items):
        try:
            out.append(validate(item))
        except InputError as exc:
            raise ServiceError(exc.status, str(exc), field=item_field(prefix, i, exc), limit=exc.limit) from None
    return out


def _payload_bytes(items: Sequence[Any]) -> int:
    return sum(len(i) if isinstance(i, (bytes, bytearray)) else i.nbytes if isinstance(i, np.ndarray) else 0
               for i in items)


def _refusal(model: ServedModel, exc: Overloaded | DeadlineExceeded) -> ServiceError:
    """503 + Retry-After for an overload, 504 for a deadline that passed."""
    if isinstance(exc, DeadlineExceeded):
        return ServiceError(504, str(exc), field="timeout", limit=None)
    return ServiceError(503, str(exc), field=None, limit=model.batcher.max_queue_items, kind="overload",
                        retry_after=exc.retry_after)


async def predict(model: ServedModel, items: list[Any], options: dict[str, Any], *, inline: bool = True
                  ) -> list[dict]:
    """Validated items through the model's batcher; 503 when its queue is full, 500 when it fails."""
    try:
        return await model.batcher.submit(items, options, inline=inline)
    except (Overloaded, DeadlineExceeded) as exc:
        raise _refusal(model, exc) from None
    except InputError as exc:  # a runtime refusing an item at predict time
        raise ServiceError(exc.status, str(exc), field=exc.field, limit=exc.limit) from None
    except ServiceError:  # the decoding scheduler's own answers (queue full, deadline, limits)
        raise
    except Exception as exc:
        log.exception("model %s failed on a batch of %d items", model.name, len(items))
        # the exception's text (file paths, library internals) stays in the server log
        raise ServiceError(500, f"model {model.name} failed on this request ({type(exc).__name__}; see the server "
                           "log)", field=None) from None


class VersionRequest:
    """One request's hold on the version that answers it: its in-flight count (a replaced version is
    freed only once it is back to zero) and its request metrics, with ``status`` as the outcome:
    the one given unless the code inside sets another or raises a ServiceError (its status)."""

    __slots__ = ("route", "status", "_t0")

    def __init__(self, route: Route, status: int):
        self.route, self.status = route, status

    def __enter__(self) -> VersionRequest:
        self.route.model.in_flight += 1
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if isinstance(exc, ServiceError):
            self.status = exc.status
        model = self.route.model
        model.in_flight -= 1
        telemetry.record_version_request(model, self.route.via, self.status, time.perf_counter() - self._t0)


async def infer(worker: Worker, route: Route, items: Sequence[Any], given: Mapping[str, Any], *,
                field: str, inline: bool = True) -> tuple[list[dict], dict[str, Any]]:
    """Results for ``items`` (named ``field`` in errors) with options ``given``; returns (results, options).

    The version's in-flight count covers the whole call, so a replaced version is freed only once
    its requests are answered. A shadow candidate gets the same items after the answer is ready.
    """
    model = route.model
    auth.check_model(model.name)  # a key limited to some models (service/auth.py)
    with VersionRequest(route, 500) as request:
        worker.check_count(len(items), field)
        options = model.spec.resolve_options(model.manifest, given)
        results = await _validated_predict(model, items, options, field, inline)
        request.status = 200
    if route.shadow is not None:
        worker.shadow.mirror(route, list(items), options, results, field)
    return results, options


async def _validated_predict(model: ServedModel, items: Sequence[Any], options: dict[str, Any],
                             field: str, inline: bool) -> list[dict]:
    runtime_options = model.spec.runtime_options(model.manifest, options)
    try:  # refuse an overload before validating (tokenizing, decoding) the items; submit checks again
        model.batcher.admit(len(items), runtime_options)
    except (Overloaded, DeadlineExceeded) as exc:
        raise _refusal(model, exc) from None
    if _payload_bytes(items) > OFFLOAD_VALIDATION_BYTES:
        valid = await anyio.to_thread.run_sync(validate_items, model, items, field)
    else:
        valid = validate_items(model, items, field)
    return await predict(model, valid, runtime_options, inline=inline)
