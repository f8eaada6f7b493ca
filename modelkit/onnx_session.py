"""onnxruntime session creation: provider choice, threads, graph variant. Torch-free."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

log = logging.getLogger(__name__)

ProviderChoice = Literal["auto", "cuda", "cpu"]
ConvAlgoSearch = Literal["HEURISTIC", "EXHAUSTIVE", "DEFAULT"]


class SessionSettings(BaseModel):
    """How to open a model's graphs.

    provider: ``auto`` uses CUDA when onnxruntime offers it, else CPU; ``cuda`` requires it.
    variant: ``fp32``, ``int8`` or ``auto`` (int8 on CPU when the model has one, fp32 on GPU).
    cuda_conv_algo_search: how the CUDA provider picks a cuDNN convolution algorithm for each new
    input shape. onnxruntime's default, EXHAUSTIVE, times every algorithm: on an H200 the fashion
    model's first call at each new batch size took about 10 ms (272 ms the very first) against
    1.5-2 ms with HEURISTIC, for a steady batch-32 call of 0.72 vs 0.77 ms (benchmarks/RESULTS.md,
    GPU section). A server's batch sizes vary with its load, so it pays those searches while
    serving: HEURISTIC is the default here.
    """

    provider: ProviderChoice = "auto"
    variant: Literal["auto", "fp32", "int8"] = "fp32"
    intra_op_threads: int = 0  # 0 = onnxruntime default (all cores)
    inter_op_threads: int = 1
    cuda_conv_algo_search: ConvAlgoSearch = "HEURISTIC"

    def providers(self) -> list:
        """onnxruntime's providers list (a CUDA entry carries its options)."""
        import onnxruntime as ort

        available = ort.get_available_providers()
        if self.provider == "cpu":
            return ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" in available:
            cuda = ("CUDAExecutionProvider", {"cudnn_conv_algo_search": self.cuda_conv_algo_search})
            return [cuda, "CPUExecutionProvider"]
        if self.provider == "cuda":
            raise RuntimeError(f"provider=cuda requested but onnxruntime offers only {available}")
        return ["CPUExecutionProvider"]

    def variant_for(self, manifest) -> str:
        if self.variant != "auto":
            return self.variant
        on_gpu = self.provider != "cpu" and self.providers()[0] != "CPUExecutionProvider"
        return "int8" if not on_gpu and "int8" in manifest.variants() else "fp32"


def open_session(path: Path, settings: SessionSettings):
    """An InferenceSession on the chosen provider; returns (session, provider actually used)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if settings.intra_op_threads:
        opts.intra_op_num_threads = settings.intra_op_threads
    opts.inter_op_num_threads = settings.inter_op_threads
    session = ort.InferenceSession(os.fspath(path), sess_options=opts, providers=settings.providers())
    provider = session.get_providers()[0]
    if settings.provider == "cuda" and provider != "CUDAExecutionProvider":
        # onnxruntime silently falls back to CPU when the CUDA provider cannot load (no GPU, no
        # CUDA/cuDNN libraries); provider=cuda promises a GPU, so refuse instead.
        raise RuntimeError(f"provider=cuda requested but {path.name} opened on {provider} (CUDA provider failed to load)")
    log.info("opened %s on %s", path, provider)
    return session, provider
