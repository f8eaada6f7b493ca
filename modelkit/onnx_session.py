"""onnxruntime session creation: provider choice, threads, graph variant. Torch-free."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

log = logging.getLogger(__name__)

ProviderChoice = Literal["auto", "cuda", "cpu"]


class SessionSettings(BaseModel):
    """How to open a model's graphs.

    provider: ``auto`` uses CUDA when onnxruntime offers it, else CPU; ``cuda`` requires it.
    variant: ``fp32``, ``int8`` or ``auto`` (int8 on CPU when the model has one, fp32 on GPU).
    """

    provider: ProviderChoice = "auto"
    variant: Literal["auto", "fp32", "int8"] = "fp32"
    intra_op_threads: int = 0  # 0 = onnxruntime default (all cores)
    inter_op_threads: int = 1

    def providers(self) -> list[str]:
        import onnxruntime as ort

        available = ort.get_available_providers()
        if self.provider == "cpu":
            return ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        if self.provider == "cuda":
            raise RuntimeError(f"provider=cuda requested but onnxruntime offers only {available}")
        return ["CPUExecutionProvider"]

    def variant_for(self, manifest) -> str:
        if self.variant != "auto":
            return self.variant
        on_gpu = self.provider != "cpu" and "CUDAExecutionProvider" in self.providers()
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
