"""Checks of an ONNX graph brought from elsewhere against what the serving runtimes feed it.

The runtimes in ``modelkit/runtimes`` call graphs by fixed input and output names (the layout
the pipeline's own exports use); an imported graph must match it. Every check raises
:class:`ImportRejected` naming the graph, the tensor and the mismatch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from modelkit.manifest import TensorSpec
from modelkit.seq2seq import cross_cache_names, self_cache_names

from .import_spec import ImportRejected

_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
               "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool", "tensor(uint8)": "uint8"}
TEXT_INPUTS = ("input_ids", "attention_mask")  # what TextClassifierRuntime feeds, by name


@dataclass
class GraphInfo:
    role: str
    path: Path
    session: ort.InferenceSession
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    opset: int
    num_parameters: int
    external_files: list[str]  # external-data files next to the graph, relative to its folder

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> TensorSpec:
        return next(t for t in self.outputs if t.name == name)


def _specs(args) -> list[TensorSpec]:
    return [
        TensorSpec(name=a.name, dtype=_ORT_DTYPES.get(a.type, a.type),
                   shape=[d if isinstance(d, int) else (d or f"dim{i}") for i, d in enumerate(a.shape)])
        for a in args
    ]


def inspect_graph(role: str, path: Path) -> GraphInfo:
    """Open the graph in onnxruntime (CPU) and read its tensors, opset, size and external data."""
    if not path.is_file():
        raise ImportRejected(f"{role}: graph file not found: {path}")
    try:
        proto = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ImportRejected(f"{role}: {path} is not an ONNX model ({exc.__class__.__name__}: {exc})") from None
    external = []
    for t in proto.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = next(e.value for e in t.external_data if e.key == "location")
            if Path(loc).is_absolute() or ".." in Path(loc).parts:
                raise ImportRejected(f"{role}: external data location {loc!r} must be a file beside {path.name}")
            external.append(loc)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    n_params = int(sum(np.prod(t.dims, dtype=np.int64) for t in proto.graph.initializer))
    del proto
    try:
        session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ImportRejected(f"{role}: onnxruntime cannot open {path}: {exc}") from None
    return GraphInfo(role, path, session, _specs(session.get_inputs()), _specs(session.get_outputs()), opset,
                     n_params, sorted(set(external)))


def _names(tensors: list[TensorSpec]) -> str:
    return ", ".join(f"{t.name} {t.dtype}{t.shape}" for t in tensors)


def _require_inputs(g: GraphInfo, required: list[str], optional: list[str] = ()) -> None:
    """Graph inputs must be exactly the required ones plus any of the optional ones."""
    have = [t.name for t in g.inputs]
    unknown = [n for n in have if n not in (*required, *optional)]
    missing = [n for n in required if n not in have]
    if unknown or missing:
        what = []
        if unknown:
            what.append(f"input(s) {', '.join(map(repr, unknown))} not fed by the serving runtime")
        if missing:
            what.append(f"missing input(s) {', '.join(map(repr, missing))}")
        expected = ", ".join(required) + (f" (optional: {', '.join(optional)})" if optional else "")
        raise ImportRejected(f"{g.role} graph {g.path.name}: {'; '.join(what)}. Expected inputs: {expected}; "
                             f"the graph has: {_names(g.inputs)}. Rename the graph's inputs (re-export) to match.")


def _require_outputs(g: GraphInfo, required: list[str]) -> None:
    have = {t.name for t in g.outputs}
    missing = [n for n in required if n not in have]
    if missing:
        raise ImportRejected(f"{g.role} graph {g.path.name}: missing output(s) {', '.join(map(repr, missing))}; "
                             f"the graph has: {_names(g.outputs)}")


def _require(g: GraphInfo, t: TensorSpec, dtype: str, rank: int, dynamic: tuple[int, ...], why: str) -> None:
    if t.dtype != dtype:
        raise ImportRejected(f"{g.role} graph: {t.name} is {t.dtype}; the runtime feeds {dtype}")
    if len(t.shape) != rank:
        raise ImportRejected(f"{g.role} graph: {t.name} has shape {t.shape} (rank {len(t.shape)}); expected rank {rank} {why}")
    for axis in dynamic:
        if isinstance(t.shape[axis], int):
            raise ImportRejected(f"{g.role} graph: {t.name} axis {axis} is fixed at {t.shape[axis]}; it must be dynamic "
                                 f"{why} (re-export with dynamic axes)")


def choose_output(g: GraphInfo, name: str | None, n_labels: int) -> TensorSpec:
    """The classifier output to serve: float [batch, n_labels]."""
    if name is None:
        out = g.outputs[0]
    elif name not in {t.name for t in g.outputs}:
        raise ImportRejected(f"output: graph {g.path.name} has no output {name!r}; it has: {_names(g.outputs)}")
    else:
        out = g.output(name)
    if out.dtype not in ("float32", "float64", "float16"):
        raise ImportRejected(f"output {out.name!r} is {out.dtype}; a classifier must output float scores (logits)")
    if len(out.shape) != 2:
        raise ImportRejected(f"output {out.name!r} has shape {out.shape}; expected [batch, {n_labels}] (one score per label)")
    if isinstance(out.shape[1], int) and out.shape[1] != n_labels:
        raise ImportRejected(f"output {out.name!r} has {out.shape[1]} scores per item (shape {out.shape}) but "
                             f"{n_labels} labels were given: they must match one to one")
    return out


def check_text_classifier(g: GraphInfo) -> None:
    _require_inputs(g, ["input_ids"], ["attention_mask"])
    for t in g.inputs:
        _require(g, t, "int64", 2, (0, 1), "[batch, sequence]: each batch is padded to its longest text")


def check_image_classifier(g: GraphInfo, spec) -> tuple[int, int]:
    """(channels, image_size) from the spec, checked against the graph's [batch, C, H, W] input."""
    if len(g.inputs) != 1:
        raise ImportRejected(f"model graph {g.path.name}: an image classifier takes one input [batch, C, H, W]; "
                             f"the graph has: {_names(g.inputs)}")
    x = g.inputs[0]
    _require(g, x, "float32", 4, (0,), "[batch, channels, height, width] (NCHW, float32)")
    _, c, h, w = x.shape
    if isinstance(h, int) and isinstance(w, int) and h != w:
        raise ImportRejected(f"model graph: input {x.name} is {h}x{w}; the image runtime feeds square images")
    channels = spec.channels if spec.channels is not None else (c if isinstance(c, int) else None)
    size = spec.image_size if spec.image_size is not None else (h if isinstance(h, int) else None)
    if channels is None or size is None:
        raise ImportRejected(f"model graph: input {x.name} has dynamic shape {x.shape}: give "
                             + " and ".join(f for f, v in (("channels", channels), ("image_size", size)) if v is None))
    if isinstance(c, int) and c != channels:
        raise ImportRejected(f"channels: {channels} given but input {x.name} has {c} channels (shape {x.shape})")
    if isinstance(h, int) and h != size:
        raise ImportRejected(f"image_size: {size} given but input {x.name} is {h}x{w} (shape {x.shape})")
    if channels not in (1, 3):
        raise ImportRejected(f"channels: {channels}; the image runtime serves 1 (greyscale) or 3 (RGB)")
    for field in ("mean", "std"):
        values = getattr(spec, field)
        if len(values) != channels:
            raise ImportRejected(f"{field}: {len(values)} value(s) for {channels} channel(s); give one per channel")
    if any(s == 0 for s in spec.std):
        raise ImportRejected("std: values must be non-zero")
    return channels, size


def check_seq2seq(graphs: dict[str, GraphInfo]) -> int:
    """Input/output names of the three translator graphs (see modelkit/seq2seq.py); returns the layer count."""
    enc, dec, past = graphs["encoder"], graphs["decoder"], graphs["decoder_with_past"]
    _require_inputs(enc, ["input_ids", "attention_mask"])
    _require_outputs(enc, ["encoder_hidden_states"])
    n = sum(1 for t in dec.outputs if t.name.startswith("present.") and t.name.endswith(".decoder.key"))
    if n == 0:
        raise ImportRejected(f"decoder graph {dec.path.name}: no present.<i>.decoder.key outputs (the key/value cache); "
                             f"it has: {_names(dec.outputs)}")
    _require_inputs(dec, ["input_ids", "encoder_hidden_states", "encoder_attention_mask"])
    _require_outputs(dec, ["logits", *self_cache_names(n, "present"), *cross_cache_names(n, "present")])
    _require_inputs(past, ["input_ids", "encoder_attention_mask", *self_cache_names(n, "past_key_values"),
                           *cross_cache_names(n, "past_key_values")])
    _require_outputs(past, ["logits", *self_cache_names(n, "present")])
    for g in graphs.values():
        for t in g.inputs:
            if t.name in ("input_ids", "attention_mask", "encoder_attention_mask"):
                one_step = g is past and t.name == "input_ids"  # [batch, 1] may be fixed at one step
                _require(g, t, "int64", 2, (0,) if one_step else (0, 1), "[batch, sequence]")
    return n
