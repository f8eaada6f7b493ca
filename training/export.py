"""ONNX export: legacy vs dynamo exporter, parity against torch, latency, int8 quantization.

Every graph is one self-contained file. Both exporters' graphs are checked against torch on
held-out inputs (max abs output difference <= tolerance) and timed in onnxruntime with the
same session settings as serving; the faster passing exporter is kept.
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from modelkit.manifest import ExporterComparison, GraphSpec, ParityResult, TensorSpec
from modelkit.onnx_session import SessionSettings, open_session

from .config import ExportConfig
from .family import GraphExport

def cpu_sessions(threads: int | None, variant: str = "fp32") -> SessionSettings:
    """onnxruntime on the CPU with ``threads`` intra-op threads (``train.threads``; None: onnxruntime's default,
    every core). A process of ``train --jobs N`` keeps to its share of the cores: with the default each of them
    opened a pool of spinning threads over every core (on a 16-core GPU machine, three processes' evaluations
    took longer than their training and slowed the third model's epochs from ~5 s to 12-20 s)."""
    return SessionSettings(provider="cpu", variant=variant, intra_op_threads=threads or 0)


class ExportError(RuntimeError):
    """No exporter produced a graph that passes parity."""


@dataclass
class ExportResult:
    graphs: list[GraphSpec]
    parity: list[ParityResult]
    exporters: ExporterComparison


def graph_file(role: str, variant: str) -> str:
    """``model.onnx`` / ``model.int8.onnx``; seq2seq roles get their own names (``encoder.onnx``)."""
    return f"{role}.onnx" if variant == "fp32" else f"{role}.{variant}.onnx"


def _tensors(g: GraphExport, batch: dict[str, np.ndarray]) -> tuple:
    return tuple(torch.from_numpy(np.ascontiguousarray(batch[n])) for n in g.input_names)


@contextlib.contextmanager
def quiet():
    """Silence exporter/quantizer chatter (warnings, INFO/WARNING logs, progress prints)."""
    root = logging.getLogger()
    old = root.level, logging.getLogger("torch.onnx").level
    root.setLevel(logging.ERROR)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(open(os.devnull, "w")):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(old[0])
        logging.getLogger("torch.onnx").setLevel(old[1])


def export_graph(g: GraphExport, path: Path, exporter: str, opset: int) -> None:
    """Write one self-contained ONNX file with the chosen exporter."""
    args = _tensors(g, g.sample_inputs[0])
    common = dict(input_names=g.input_names, output_names=g.output_names, opset_version=opset, dynamic_axes=g.dynamic_axes)
    with quiet(), torch.no_grad():
        if exporter == "legacy":
            torch.onnx.export(g.module, args, os.fspath(path), dynamo=False, do_constant_folding=True, **common)
        else:
            torch.onnx.export(
                g.module, args, os.fspath(path), dynamo=True, external_data=False, optimize=True, verbose=False, **common
            )
    make_self_contained(path)


def make_self_contained(path: Path) -> None:
    """Fold any external-data file back into the graph file."""
    sidecars = [p for p in path.parent.iterdir() if p.name.startswith(path.name) and p != path]
    if not sidecars:
        return
    model = onnx.load(os.fspath(path), load_external_data=True)
    onnx.save_model(model, os.fspath(path), save_as_external_data=False)
    for p in sidecars:
        p.unlink()


def torch_outputs(g: GraphExport, batch: dict[str, np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        out = g.module(*_tensors(g, batch))
    out = out if isinstance(out, (tuple, list)) else (out,)
    return [o.detach().cpu().numpy() for o in out]


def compare(g: GraphExport, session) -> tuple[float, int, float | None]:
    """(max abs diff over all outputs, rows checked, argmax agreement of the first output)."""
    max_diff, rows, agree, total = 0.0, 0, 0, 0
    for batch in g.sample_inputs:
        ref = torch_outputs(g, batch)
        got = session.run(g.output_names, {n: batch[n] for n in g.input_names})
        for r, o in zip(ref, got):
            max_diff = max(max_diff, float(np.max(np.abs(r.astype(np.float64) - o.astype(np.float64)))))
        if ref[0].ndim >= 2 and np.issubdtype(ref[0].dtype, np.floating):
            a, b = ref[0].argmax(-1), got[0].argmax(-1)
            agree += int((a == b).sum())
            total += a.size
        rows += len(next(iter(batch.values())))
    return max_diff, rows, (agree / total if total else None)


def latency_ms(g: GraphExport, session, batch_size: int, repeats: int) -> float:
    """Median onnxruntime latency of one batch of ``batch_size`` held-out rows."""
    first = g.sample_inputs[0]
    n = len(next(iter(first.values())))
    idx = np.resize(np.arange(n), batch_size)
    feeds = {k: np.ascontiguousarray(first[k][idx]) for k in g.input_names}
    for _ in range(2):
        session.run(g.output_names, feeds)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        session.run(g.output_names, feeds)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


_ORT_DTYPES = {"float": "float32", "double": "float64", "float16": "float16"}


def _dtype(ort_type: str) -> str:
    """numpy dtype name of an onnxruntime type string such as ``tensor(float)``."""
    name = ort_type.removeprefix("tensor(").removesuffix(")")
    return _ORT_DTYPES.get(name, name)


def graph_spec(path: Path, rel: str, role: str, variant: str, exporter: str, sessions: SessionSettings) -> GraphSpec:
    """GraphSpec from the file itself: opset and tensor names, dtypes, shapes (dynamic axes by name)."""
    session, _ = open_session(path, sessions)
    model = onnx.load(os.fspath(path), load_external_data=False)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))

    def spec(t):
        shape = [d if isinstance(d, int) else (d or "?") for d in t.shape]
        return TensorSpec(name=t.name, dtype=_dtype(t.type), shape=shape)

    return GraphSpec(
        role=role, variant=variant, path=rel, opset=opset, exporter=exporter,
        inputs=[spec(t) for t in session.get_inputs()], outputs=[spec(t) for t in session.get_outputs()],
    )


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantization of weights (onnxruntime.quantization)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet():
        quantize_dynamic(os.fspath(src), os.fspath(dst), weight_type=QuantType.QInt8)


def export_all(graphs: list[GraphExport], cfg: ExportConfig, staging: Path, log=print,
               threads: int | None = None) -> ExportResult:
    """Export with each configured exporter, keep the faster one passing parity, add int8 (parity and latency
    on ``threads`` onnxruntime threads, see ``cpu_sessions``)."""
    sessions = cpu_sessions(threads)
    for g in graphs:
        g.module.eval()
    tried: dict[str, dict] = {}
    notes: dict[str, str] = {}
    for exporter in cfg.exporters:
        files, diffs, rows, lat = {}, {}, [], 0.0
        try:
            t0 = time.perf_counter()
            for g in graphs:
                path = staging / f".{g.role}.{exporter}.onnx"
                export_graph(g, path, exporter, cfg.opset)
                session, _ = open_session(path, sessions)
                diff, n, _ = compare(g, session)
                files[g.role], diffs[g.role] = path, diff
                rows.append(n)
                lat += latency_ms(g, session, cfg.latency_batch, cfg.latency_repeats)
            export_s = time.perf_counter() - t0
        except Exception as exc:  # an exporter that cannot handle the model is a result, not a crash
            notes[exporter] = f"export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            log(f"  {exporter} exporter: {notes[exporter]}")
            tried[exporter] = {"latency": None, "passed": False}
            continue
        max_diff = max(diffs.values())
        passed = max_diff <= cfg.parity_tolerance
        notes[exporter] = (
            f"max abs diff {max_diff:.2e} on {min(rows)} inputs ({'pass' if passed else 'FAIL'}); "
            f"export {export_s:.1f} s; latency {lat:.2f} ms at batch {cfg.latency_batch}"
        )
        log(f"  {exporter} exporter: {notes[exporter]}")
        tried[exporter] = {"latency": lat, "passed": passed, "files": files, "diffs": diffs, "rows": min(rows)}
    passing = [e for e, r in tried.items() if r["passed"]]
    if not passing:
        raise ExportError("no exporter passed the parity check: " + "; ".join(f"{e}: {n}" for e, n in notes.items()))
    chosen = min(passing, key=lambda e: tried[e]["latency"])
    for e, r in tried.items():  # keep only the chosen exporter's files
        for role, path in r.get("files", {}).items():
            if e == chosen:
                os.replace(path, staging / graph_file(role, "fp32"))
            else:
                path.unlink(missing_ok=True)
    best = tried[chosen]
    specs = [graph_spec(staging / graph_file(g.role, "fp32"), graph_file(g.role, "fp32"), g.role, "fp32", chosen,
                        sessions) for g in graphs]
    parity = [
        ParityResult(
            variant="fp32", n_inputs=best["rows"], max_abs_diff=max(best["diffs"].values()),
            tolerance=cfg.parity_tolerance, passed=True, top1_agreement=None,
            notes=f"{chosen} exporter; per graph: " + ", ".join(f"{k} {v:.2e}" for k, v in best["diffs"].items()),
        )
    ]
    if cfg.quantize:
        int8_diffs, int8_agree, rows = {}, [], []
        for g in graphs:
            src, dst = staging / graph_file(g.role, "fp32"), staging / graph_file(g.role, "int8")
            quantize_int8(src, dst)
            session, _ = open_session(dst, sessions)
            diff, n, agree = compare(g, session)
            int8_diffs[g.role] = diff
            rows.append(n)
            if agree is not None:
                int8_agree.append(agree)
            specs.append(graph_spec(dst, graph_file(g.role, "int8"), g.role, "int8", chosen, sessions))
        parity.append(
            ParityResult(
                variant="int8", n_inputs=min(rows), max_abs_diff=max(int8_diffs.values()), tolerance=None,
                passed=not int8_agree or min(int8_agree) >= cfg.int8_min_agreement,
                top1_agreement=min(int8_agree) if int8_agree else None,
                notes="dynamic int8 (QInt8 weights) vs torch fp32; top1 = argmax agreement of the first output; "
                "per graph: " + ", ".join(f"{k} {v:.2e}" for k, v in int8_diffs.items()),
            )
        )
    latency = {e: (round(r["latency"], 3) if r["latency"] is not None else None) for e, r in tried.items()}
    return ExportResult(specs, parity, ExporterComparison(chosen=chosen, latency_ms=latency, notes=notes))
