"""Open Inference Protocol v2 over gRPC: ``inference.GRPCInferenceService`` in every worker.

Each worker runs a ``grpc.aio`` server on its own event loop, bound to the same port
(SO_REUSEPORT, so the kernel spreads connections over the workers like it does for HTTP), and
calls the same dataplane as the HTTP doors. Tensors arrive as typed ``contents`` or as
``raw_input_contents`` (what ``tritonclient.grpc`` sends); outputs always go back as
``raw_output_contents``. Errors are gRPC status codes (``ServiceError.grpc_code``), with a
``retry-after`` trailing metadata entry (seconds) on overload and rate limits.

API keys come as ``authorization: Bearer <key>`` or ``x-api-key`` metadata; the call's gRPC
deadline is the request's deadline (``service.deadlines``). ``ServerLive`` and ``ServerReady``
are open, like the HTTP probes.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from functools import wraps
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from .. import telemetry
from ..errors import ServiceError
from ..guard import OPEN_GRPC, Guard
from ..tasks.base import TensorValues
from ..worker import Worker
from . import oip
from .oip_codec import InferRequest, RequestedOutput, check_shape, dtype_of, from_raw, to_raw

log = logging.getLogger("service.grpc")

PROTOCOL = "oip-grpc"
PROTO_DIR = Path(__file__).parent / "proto"
PROTO_FILE = "open_inference_grpc.proto"
# typed contents field per datatype (FP16 has none: raw contents only)
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def load_protocol():
    """(messages module, services module) compiled from the vendored .proto (grpcio-tools, in memory)."""
    sys.path.insert(0, str(PROTO_DIR))
    try:
        return grpc.protos_and_services(PROTO_FILE)
    finally:
        sys.path.remove(str(PROTO_DIR))


pb, pb_grpc = load_protocol()


def _param_value(p) -> Any:
    which = p.WhichOneof("parameter_choice")
    return getattr(p, which) if which else None


def decode_request(request) -> InferRequest:
    """A ModelInferRequest -> InferRequest (numpy tensors, plain parameters)."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise ServiceError(400, f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs",
                           field="raw_input_contents", limit=len(request.inputs))
    inputs: dict[str, np.ndarray] = {}
    for i, t in enumerate(request.inputs):
        if t.name in inputs:
            raise ServiceError(422, f"input {t.name!r} given twice", field=t.name)
        shape = check_shape(t.name, list(t.shape))
        dtype_of(t.name, t.datatype)
        inputs[t.name] = from_raw(t.name, t.datatype, shape, raw[i]) if raw else _from_contents(t, shape)
    outputs = None
    if request.outputs:
        outputs = []
        for o in request.outputs:
            count = _param_value(o.parameters["classification"]) if "classification" in o.parameters else 0
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ServiceError(422, f"output {o.name!r}: classification must be a non-negative integer",
                                   field=f"outputs.{o.name}.parameters.classification", limit=0)
            outputs.append(RequestedOutput(o.name, True, count))
    params = {k: _param_value(v) for k, v in request.parameters.items()}
    return InferRequest(inputs=inputs, parameters=params, outputs=outputs, id=request.id)


def _from_contents(t, shape: list[int]) -> np.ndarray | TensorValues:
    field = CONTENTS_FIELD.get(t.datatype)
    if field is None:
        raise ServiceError(422, f"input {t.name!r}: {t.datatype} needs raw_input_contents", field=t.name)
    values = list(getattr(t.contents, field))
    count = math.prod(shape)
    if len(values) != count:
        raise ServiceError(422, f"input {t.name!r}: {len(values)} elements for shape {shape} ({count} expected)",
                           field=t.name, limit=count)
    if t.datatype == "BYTES":
        return TensorValues(tuple(shape), values)
    try:
        return np.asarray(values, dtype=dtype_of(t.name, t.datatype)).reshape(shape)
    except (OverflowError, ValueError) as exc:
        raise ServiceError(422, f"input {t.name!r}: data does not fit {t.datatype}: {exc}", field=t.name) from None


def _metadata(context) -> dict[str, str]:
    """Invocation metadata as a dict with lower-case keys (binary ``-bin`` entries left out)."""
    return {k.lower(): v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


def _peer_host(context) -> str | None:
    peer = context.peer() or ""  # "ipv4:127.0.0.1:5555", "ipv6:[::1]:5555", "unix:..."
    kind, _, rest = peer.partition(":")
    return rest.rsplit(":", 1)[0] if kind in ("ipv4", "ipv6") else peer or None


def _rpc(method):
    """Key check, rate limit, deadline, metrics, the traffic count and error -> status code around one RPC."""
    endpoint = method.__name__

    @wraps(method)
    async def wrapped(self: "InferenceServicer", request, context):
        t0 = time.perf_counter()
        status = 200
        traffic = self.worker.traffic
        traffic.in_handlers += 1
        telemetry.request_started(PROTOCOL, endpoint)
        try:
            if endpoint not in OPEN_GRPC:
                self.guard.admit(_metadata(context), _peer_host(context))
                self.guard.deadlines.start(endpoint, context.time_remaining())
            return await method(self, request, context)
        except ServiceError as err:
            status = err.status
            err.log("gRPC", endpoint)
            model = getattr(request, "model_name", "") or getattr(request, "name", "") or None
            telemetry.count_error(PROTOCOL, endpoint, model, err.kind)
            await context.abort(getattr(grpc.StatusCode, err.grpc_code), err.message,
                                trailing_metadata=err.grpc_trailers())
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            status = 500
            log.exception("gRPC %s failed", endpoint)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error, see the server log")
        finally:
            traffic.in_handlers -= 1
            telemetry.request_finished(PROTOCOL, endpoint)
            telemetry.record_request(PROTOCOL, endpoint, status, time.perf_counter() - t0)

    return wrapped


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The six RPCs of the protocol over one worker's models."""

    def __init__(self, worker: Worker, guard: Guard):
        self.worker = worker
        self.guard = guard

    @_rpc
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    @_rpc
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.worker.ready and not self.guard.drain.draining)

    @_rpc
    async def ModelReady(self, request, context):
        try:
            self.worker.model(request.name, request.version or None)
        except ServiceError as err:
            if err.status == 404:
                raise
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @_rpc
    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(**oip.server_metadata())

    @_rpc
    async def ModelMetadata(self, request, context):
        meta = oip.model_metadata(self.worker.model(request.name, request.version or None))
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]], outputs=[tensor(**t) for t in meta["outputs"]],
            properties=meta["parameters"],
        )

    @_rpc
    async def ModelInfer(self, request, context):
        self.worker.model(request.model_name, request.model_version or None)  # 404 / 503 first
        decoded = decode_request(request)
        request_id = request.id or dict(context.invocation_metadata() or ()).get("x-request-id")
        route = self.worker.route(request.model_name, request.model_version or None, request_id)
        model = route.model
        outputs = await oip.infer(self.worker, route, decoded, inline=False)  # see Batcher.submit
        response = pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=request.id)
        for name, datatype, values, _ in outputs:
            response.outputs.add(name=name, datatype=datatype, shape=values.shape)
            response.raw_output_contents.append(to_raw(values, datatype))
        return response


async def start_server(worker: Worker, guard: Guard, host: str, port: int) -> grpc.aio.Server:
    """A started gRPC server for this worker (every worker binds the same port: SO_REUSEPORT)."""
    limit = worker.settings.max_request_bytes
    server = grpc.aio.server(options=[
        ("grpc.so_reuseport", 1),
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", max(limit, 64 * 1024 * 1024)),
    ])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(worker, guard), server)
    address = f"{host}:{port}"
    if server.add_insecure_port(address) == 0:
        raise RuntimeError(f"gRPC door could not bind {address}")
    await server.start()
    log.info("gRPC door (inference.GRPCInferenceService) listening on %s", address)
    return server
