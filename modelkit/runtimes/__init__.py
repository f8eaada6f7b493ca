"""Runtime classes by task, imported lazily so serving one family never loads another's code."""

from __future__ import annotations

import importlib
from pathlib import Path

from ..manifest import Manifest
from ..onnx_session import SessionSettings
from .base import InputError, Runtime

RUNTIMES: dict[str, str] = {
    "text-classification": "modelkit.runtimes.text_classifier:TextClassifierRuntime",
    "multi-label-classification": "modelkit.runtimes.text_classifier:TextClassifierRuntime",
    "image-classification": "modelkit.runtimes.image_classifier:ImageClassifierRuntime",
    "translation": "modelkit.runtimes.translator:TranslatorRuntime",
}


def runtime_class(task: str) -> type[Runtime]:
    module, _, cls = RUNTIMES[task].partition(":")
    return getattr(importlib.import_module(module), cls)


def create_runtime(manifest: Manifest, version_dir: Path, settings: SessionSettings | None = None) -> Runtime:
    """The runtime for this manifest's task (not yet loaded)."""
    return runtime_class(manifest.task)(manifest, version_dir, settings)


__all__ = ["InputError", "Runtime", "RUNTIMES", "create_runtime", "runtime_class"]
