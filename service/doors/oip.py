"""What the two Open Inference Protocol doors share: metadata, input tensors -> items, results -> outputs.

Tensor conventions (from each model's task spec, see the README): text models take ``text``
(BYTES [-1]); classifiers answer ``label`` + ``probabilities`` (multi-label: ``labels`` + ``scores``);
image models take ``image`` (UINT8 [-1, H, W, C]) or ``image_bytes`` (BYTES [-1]); translators
answer ``translation``. Task options (``top_k``, ``num_beams``, ``max_new_tokens``) are request
parameters; Triton's classification extension works on every FP32 [-1, C] score output.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np

from .. import dataplane, deadlines
from ..errors import ServiceError
from ..models import ServedModel
from ..tasks.base import TensorValues
from ..worker import Route, Worker
from .oip_codec import DATATYPES, InferRequest, RequestedOutput, classification_strings

SERVER_NAME = "modelserve"
EXTENSIONS = ["binary_tensor_data", "classification"]
PLATFORM = "onnxruntime_onnx"
# request parameters the protocol (or Triton's clients) may send besides the task's options
PROTOCOL_PARAMETERS = frozenset({"binary_data_output", "timeout", "priority", "sequence_id", "sequence_start",
                                 "sequence_end"})


def server_version() -> str:
    try:
        return version("modelserve")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0"


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": server_version(), "extensions": EXTENSIONS}


def model_metadata(model: ServedModel) -> dict[str, Any]:
    """Name, versions, platform, input and output tensors (from the task spec and the manifest)."""
    spec, mf = model.spec, model.manifest
    params = spec.model_parameters(mf)
    if mf.labels:
        params["labels"] = json.dumps(mf.labels)
    return {
        "name": model.name,
        "versions": [model.version],
        "platform": PLATFORM,
        "inputs": [t.metadata(mf) for t in spec.inputs],
        "outputs": [t.metadata(mf) for t in spec.outputs],
        "parameters": params,
    }


def items_from(model: ServedModel, inputs: Mapping[str, np.ndarray | TensorValues]) -> tuple[list[Any], str]:
    """The request's input tensors, checked against the task's, as runtime items (and their tensor's name)."""
    declared = model.spec.input_tensors
    for name, arr in inputs.items():
        tensor = declared.get(name)
        if tensor is None:
            raise ServiceError(422, f"model {model.name!r} has no input {name!r}", field="inputs",
                               limit=sorted(declared))
        if _datatype(arr) != tensor.datatype:
            raise ServiceError(422, f"input {name!r} must be {tensor.datatype}, got {_datatype(arr)}",
                               field=name, limit=tensor.datatype)
    if len(declared) == 1 and not inputs:  # (every input given was checked to be declared)
        raise ServiceError(422, f"model {model.name!r} needs the input {next(iter(declared))!r}", field="inputs",
                           limit=sorted(declared))
    return model.spec.items_from_tensors(model.manifest, inputs)


def _datatype(arr: np.ndarray | TensorValues) -> str:
    return "BYTES" if type(arr) is TensorValues else DATATYPES[arr.dtype]


def options_from(model: ServedModel, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The task's options from the request parameters; 422 naming a parameter nobody reads."""
    if not parameters:
        return {}
    names = model.spec.option_names
    given = {}
    for k, v in parameters.items():
        if k in names:
            given[k] = v
        elif k not in PROTOCOL_PARAMETERS:
            unknown = sorted(set(parameters) - names - PROTOCOL_PARAMETERS)[0]
            raise ServiceError(422, f"unknown request parameter {unknown!r} for model {model.name!r}",
                               field=f"parameters.{unknown}", limit=sorted(names))
    return given


def outputs_for(model: ServedModel, results: Sequence[dict], requested: list[RequestedOutput] | None,
                binary_default: bool) -> list[tuple[str, str, TensorValues, bool]]:
    """(name, datatype, values, binary) for each requested output (every output when none is named; the names
    were checked by ``infer`` before any work was done)."""
    spec, manifest = model.spec, model.manifest
    if requested is None:  # every output, as the request's binary_data_output says
        return [(t.name, t.datatype, spec.output(t.name, results, manifest), binary_default) for t in spec.outputs]
    out = []
    for req in requested:
        values = spec.output(req.name, results, manifest)
        datatype = spec.output_tensors[req.name].datatype
        if req.class_count:
            shape = values.shape
            if datatype != "FP32" or len(shape) != 2 or shape[1] != len(manifest.labels):
                raise ServiceError(422, f"output {req.name!r} does not hold per-label scores, so it cannot be "
                                   "classified", field=f"outputs.{req.name}.parameters.classification")
            scores = np.asarray(values.values, dtype=np.float32).reshape(shape)
            values, datatype = classification_strings(scores, manifest.labels, req.class_count), "BYTES"
        out.append((req.name, datatype, values, binary_default if req.binary is None else req.binary))
    return out


async def infer(worker: Worker, route: Route, request: InferRequest, *, inline: bool = True
                ) -> list[tuple[str, str, TensorValues, bool]]:
    """An OIP inference request through the dataplane; the output tensors to send back."""
    model = route.model
    if request.outputs is not None:  # an unknown output is refused before any work is done
        known = model.spec.output_tensors
        for req in request.outputs:
            if req.name not in known:
                raise ServiceError(422, f"model {model.name!r} has no output {req.name!r}", field="outputs",
                                   limit=sorted(known))
    items, field = items_from(model, request.inputs)
    given = options_from(model, request.parameters)
    deadlines.apply_parameters(request.parameters)
    results, _ = await dataplane.infer(worker, route, items, given, field=field, inline=inline)
    binary_default = bool(request.parameters.get("binary_data_output", False))
    return outputs_for(model, results, request.outputs, binary_default)
