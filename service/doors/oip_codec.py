"""Open Inference Protocol tensors <-> numpy: JSON tensors, the binary tensor data extension, gRPC raw contents.

BYTES tensors, and every output, are ``TensorValues`` (shape and flat Python values: input BYTES
elements ``bytes``, output ones ``str``); other inputs are numpy arrays. On the wire (binary
extension and gRPC ``raw_*_contents``) each BYTES element is a 4-byte little-endian length
followed by its bytes.
Every malformed tensor is a ``ServiceError`` naming the tensor and what was expected.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import numpy as np
import orjson
import pydantic_core

from ..bounded import BoundedDict
from ..errors import ServiceError
from ..tasks.base import TensorValues

DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"),
    "INT8": np.dtype(np.int8), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
DATATYPES: dict[np.dtype, str] = {dt: name for name, dt in DTYPES.items()}  # numpy dtype -> OIP datatype
# struct codes of the fixed-size datatypes: packing a list of Python numbers took 0.3 us for 3 floats and
# 3.4 us for 320 against numpy's 0.5 and 25 (array from the list, then its bytes)
STRUCT_CODES = {"BOOL": "?", "UINT8": "B", "UINT16": "H", "UINT32": "I", "UINT64": "Q", "INT8": "b", "INT16": "h",
                "INT32": "i", "INT64": "q", "FP16": "e", "FP32": "f", "FP64": "d"}
_LEN = struct.Struct("<I")
REQUEST_FIELDS = frozenset({"id", "parameters", "inputs", "outputs"})  # of a REST inference request body
JSON_MAX_DEPTH = 200  # pydantic-core's (jiter's) fixed recursion limit, for both HTTP doors' JSON bodies


@dataclass
class RequestedOutput:
    name: str
    binary: bool | None = None  # None: the request's binary_data_output decides
    class_count: int = 0  # Triton's classification extension: top-k "score:index:label" strings


@dataclass
class InferRequest:
    """One decoded inference request, whatever door it came through."""

    inputs: dict[str, np.ndarray | TensorValues]  # BYTES tensors as TensorValues of bytes
    parameters: Mapping[str, Any] = field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None
    id: str = ""


def _bad(message: str, field: str, limit: Any = None, status: int = 422) -> ServiceError:
    return ServiceError(status, message, field=field, limit=limit)


def check_shape(name: str, shape: Any) -> list[int]:
    if isinstance(shape, (list, tuple)):
        for d in shape:
            if type(d) is not int or d < 0:  # type(): a bool is not a dimension
                break
        else:
            return list(shape)
    raise _bad(f"input {name!r}: shape must be a list of non-negative integers, got {shape!r}", f"{name}.shape")


def dtype_of(name: str, datatype: Any) -> np.dtype:
    if not isinstance(datatype, str) or datatype not in DTYPES:  # a JSON list or object is not hashable
        raise _bad(f"input {name!r}: unknown datatype {datatype!r}", f"{name}.datatype", sorted(DTYPES))
    return DTYPES[datatype]


# ---- BYTES on the wire --------------------------------------------------------------------------


def serialize_bytes(values: Iterable[bytes | str]) -> bytes:
    """Flat BYTES elements (``str`` as UTF-8) -> length-prefixed elements."""
    out = bytearray()
    for v in values:
        b = v.encode("utf-8") if type(v) is str else bytes(v)
        out += _LEN.pack(len(b))
        out += b
    return bytes(out)


def deserialize_bytes(buf: bytes | memoryview, count: int, name: str) -> list[bytes]:
    """Length-prefixed elements -> exactly ``count`` bytes values; 422 on a short or long buffer."""
    buf = memoryview(buf)
    end = len(buf)
    out, pos = [], 0
    for _ in range(count):
        if pos + 4 > end:
            raise _bad(f"input {name!r}: BYTES data ends after {len(out)} of {count} elements", name, count)
        n = _LEN.unpack_from(buf, pos)[0]
        pos += 4
        if pos + n > end:
            raise _bad(f"input {name!r}: BYTES element {len(out)} claims {n} bytes past the end of the data", name)
        out.append(bytes(buf[pos:pos + n]))
        pos += n
    if pos != end:
        raise _bad(f"input {name!r}: {end - pos} bytes of data beyond its {count} elements", name, count)
    return out


def from_raw(name: str, datatype: str, shape: list[int], raw: bytes | memoryview) -> np.ndarray | TensorValues:
    """A tensor from its raw bytes (binary extension, gRPC raw_input_contents)."""
    dtype = dtype_of(name, datatype)
    count = shape[0] if len(shape) == 1 else math.prod(shape)
    if datatype == "BYTES":
        return TensorValues(tuple(shape), deserialize_bytes(raw, count, name))
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise _bad(f"input {name!r}: {len(raw)} bytes of data for shape {shape} of {datatype} "
                   f"({expected} expected)", name, expected)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def to_raw(out: TensorValues, datatype: str) -> bytes:
    """An output's elements as the binary extension and gRPC carry them."""
    if datatype == "BYTES":
        return serialize_bytes(out.values)
    return struct.pack(f"<{len(out.values)}{STRUCT_CODES[datatype]}", *out.values)


def from_json_data(name: str, datatype: str, shape: list[int], data: Any) -> np.ndarray | TensorValues:
    """A tensor from the JSON ``data`` field (flat or nested, row-major); BYTES elements are strings."""
    dtype = dtype_of(name, datatype)
    count = math.prod(shape)
    flat = _flatten(data, name)
    if len(flat) != count:
        raise _bad(f"input {name!r}: {len(flat)} elements for shape {shape} ({count} expected)", name, count)
    if datatype == "BYTES":
        try:
            values = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in flat]
        except (TypeError, ValueError):
            raise _bad(f"input {name!r}: BYTES elements must be strings in JSON", name, "string") from None
        return TensorValues(tuple(shape), values)
    if any(isinstance(v, (str, list, dict)) or v is None for v in flat):
        raise _bad(f"input {name!r}: {datatype} elements must be numbers", name, datatype)
    try:
        arr = np.asarray(flat, dtype=dtype)
    except (OverflowError, ValueError, TypeError) as exc:
        raise _bad(f"input {name!r}: data does not fit {datatype}: {exc}", name, datatype) from None
    return arr.reshape(shape)


def _flatten(data: Any, name: str) -> list:
    if not isinstance(data, list):
        raise _bad(f"input {name!r}: data must be a list", f"{name}.data", "list")
    if not any(isinstance(v, list) for v in data):
        return data
    out: list = []
    stack = [iter(data)]
    while stack:  # iterative: a deeply nested body cannot exhaust the recursion limit
        for v in stack[-1]:
            if isinstance(v, list):
                stack.append(iter(v))
                break
            out.append(v)
        else:
            stack.pop()
    return out


# ---- requested outputs and parameters -------------------------------------------------------------


def requested_outputs(raw: Any) -> list[RequestedOutput] | None:
    """The JSON ``outputs`` list -> RequestedOutput entries (None when absent)."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise _bad("outputs must be a list", "outputs", "list")
    out = []
    for i, o in enumerate(raw):
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise _bad(f"outputs[{i}] must be an object with a name", f"outputs[{i}]")
        params = o.get("parameters") or {}
        if not isinstance(params, dict):
            raise _bad(f"outputs[{i}].parameters must be an object", f"outputs[{i}].parameters")
        binary = params.get("binary_data")
        count = params.get("classification", 0)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise _bad(f"outputs[{i}].parameters.classification must be a non-negative integer",
                       f"outputs[{i}].parameters.classification", 0)
        out.append(RequestedOutput(o["name"], bool(binary) if binary is not None else None, count))
    return out


def classification_strings(scores: np.ndarray, labels: Sequence[str], k: int) -> TensorValues:
    """Triton's classification extension: per row the top ``k`` as ``"score:index:label"`` (BYTES [N, k])."""
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    values = [f"{scores[r, c]:f}:{c}:{labels[c]}" for r, row in enumerate(order.tolist()) for c in row]
    return TensorValues(order.shape, values)


# ---- the REST door's bodies ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _TensorEntry:
    """One input of a REST request's JSON: its binary data's size, or its array decoded from JSON ``data``."""

    name: str
    datatype: str
    shape: list[int]
    binary_size: int | None
    array: np.ndarray | TensorValues | None


@dataclass(frozen=True)
class RestHeader:
    """A REST request's JSON, checked: what the binary data must hold and everything but the tensors' bytes."""

    entries: tuple[_TensorEntry, ...]
    parameters: Mapping[str, Any]
    outputs: list[RequestedOutput] | None
    id: str

    @property
    def all_binary(self) -> bool:
        return all(e.array is None for e in self.entries)


class RestHeaders:
    """Checked binary-extension headers by their bytes, so a header seen before is not parsed again.

    A client sends the same header for every request of the same shapes (``tritonclient`` and
    ``perf_analyzer`` do; a text's header differs only by its byte count): parsing and checking it
    took ~4 of the ~6 us decoding a one-text request took (benchmarks/RESULTS.md). Kept: headers of
    at most ``max_header_bytes`` whose inputs are all binary and that carry no request id (nothing in
    them is one request's own), at most ``capacity`` of them, the oldest dropped first; a kept
    header's mappings are read-only.
    """

    def __init__(self, capacity: int = 4096, max_header_bytes: int = 1024):
        self.max_header_bytes = max_header_bytes
        self._kept: BoundedDict = BoundedDict(capacity)  # header bytes -> RestHeader

    def get(self, head: bytes) -> RestHeader:
        found = self._kept.get(head)
        if found is None:
            found = parse_rest_header(head)
            if found.all_binary and not found.id and len(head) <= self.max_header_bytes:
                found = self._kept.keep(head, replace(found, parameters=MappingProxyType(found.parameters)))
        return found


def parse_rest_header(head: bytes) -> RestHeader:
    """A REST request's JSON (all of a JSON body, or the header of a binary one), checked; 4xx naming the field."""
    try:
        # pydantic-core's parser: 4x json.loads here, and nesting is bounded (JSON_MAX_DEPTH levels) by the
        # parser itself instead of by Python's recursion limit
        doc = pydantic_core.from_json(head, cache_strings=False)
    except ValueError as exc:
        raise _bad(f"request body is not valid JSON (at most {JSON_MAX_DEPTH} levels of nesting): {str(exc)[:200]}",
                   "body", JSON_MAX_DEPTH, status=400) from None
    if not isinstance(doc, dict):
        raise _bad("request body must be a JSON object", "body", status=400)
    if not REQUEST_FIELDS.issuperset(doc):
        unknown = sorted(set(doc) - REQUEST_FIELDS)[0]
        raise _bad(f"unknown field {unknown!r} in the request", unknown, sorted(REQUEST_FIELDS))
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise _bad("parameters must be an object", "parameters", "object")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise _bad("inputs must be a non-empty list of tensors", "inputs", 1)
    entries: list[_TensorEntry] = []
    for i, t in enumerate(raw_inputs):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise _bad(f"inputs[{i}] must be an object with a name", f"inputs[{i}]")
        name = t["name"]
        if any(e.name == name for e in entries):
            raise _bad(f"input {name!r} given twice", name)
        shape = check_shape(name, t.get("shape"))
        datatype = t.get("datatype")
        dtype_of(name, datatype)
        tparams = t.get("parameters") or {}
        size = tparams.get("binary_data_size") if isinstance(tparams, dict) else None
        if size is not None:
            if type(size) is not int or size < 0:  # type(): not a bool
                raise _bad(f"input {name!r}: binary_data_size must be a non-negative integer, got {size!r}",
                           f"{name}.parameters.binary_data_size", 0)
            entries.append(_TensorEntry(name, datatype, shape, size, None))
        elif "data" in t:
            entries.append(_TensorEntry(name, datatype, shape, None, from_json_data(name, datatype, shape, t["data"])))
        else:
            raise _bad(f"input {name!r} has neither data nor parameters.binary_data_size", name)
    outputs = doc.get("outputs")
    request_id = doc.get("id")
    return RestHeader(tuple(entries), params, None if outputs is None else requested_outputs(outputs),
                      "" if request_id is None else str(request_id))


def decode_rest_request(body: bytes, header_length: int | None, headers: RestHeaders | None = None) -> InferRequest:
    """A REST inference body: JSON, or a JSON header of ``header_length`` bytes followed by binary tensors
    (``headers``: where checked headers are kept)."""
    if header_length is None:
        header, binary = parse_rest_header(body), memoryview(b"")
    elif 0 < header_length <= len(body):
        head = body[:header_length]
        header = headers.get(head) if headers is not None else parse_rest_header(head)
        binary = memoryview(body)[header_length:]
    else:
        raise _bad(f"Inference-Header-Content-Length is {header_length}, the body has {len(body)} bytes",
                   "Inference-Header-Content-Length", len(body), status=400)
    inputs: dict[str, np.ndarray | TensorValues] = {}
    pos = 0
    for e in header.entries:
        size = e.binary_size
        if size is None:
            inputs[e.name] = e.array
            continue
        if pos + size > len(binary):
            raise _bad(f"input {e.name!r}: binary_data_size {size} does not fit the {len(binary) - pos} bytes of "
                       "binary data left", f"{e.name}.parameters.binary_data_size", len(binary) - pos)
        inputs[e.name] = from_raw(e.name, e.datatype, e.shape, binary[pos:pos + size])
        pos += size
    if pos != len(binary):
        raise _bad(f"{len(binary) - pos} bytes of binary data belong to no input", "body", status=400)
    return InferRequest(inputs, header.parameters, header.outputs, header.id)


def encode_rest_response(header: Mapping[str, Any], outputs: Sequence[tuple[str, str, TensorValues, bool]]
                         ) -> tuple[bytes, int | None]:
    """(body, header length or None): outputs as JSON data or, where asked, binary after the JSON header."""
    tensors, blobs = [], []
    for name, datatype, out, binary in outputs:
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": out.shape}
        if binary:
            raw = to_raw(out, datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = out.values  # flat, row-major: what the protocol's JSON data is
        tensors.append(entry)
    head = orjson.dumps({**header, "outputs": tensors})
    if not blobs:
        return head, None
    return b"".join([head, *blobs]), len(head)
