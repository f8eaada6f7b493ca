"""A runtime serves one registered model version: ``load()`` then ``predict()``.

The service knows nothing else about a model (MLServer-style). Runtimes are torch-free:
they use onnxruntime, numpy and the family's own pre/post-processing in ``modelkit``.
Training evaluates exported graphs through the same runtimes, so serving and
evaluation cannot disagree.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from ..manifest import Manifest, Task
from ..onnx_session import SessionSettings


class InputError(ValueError):
    """One input item is invalid; ``field`` and ``limit`` say which and why (maps to HTTP 4xx)."""

    def __init__(self, message: str, *, field: str, limit: Any = None, status: int = 422):
        super().__init__(message)
        self.field = field
        self.limit = limit
        self.status = status


class Runtime(ABC):
    """Base class: one model version, one or more onnxruntime sessions."""

    task: ClassVar[Task]

    def __init__(self, manifest: Manifest, version_dir: Path, settings: SessionSettings | None = None):
        self.manifest = manifest
        self.version_dir = Path(version_dir)
        self.settings = settings or SessionSettings()
        self.provider: str | None = None  # filled by load(): the execution provider actually used
        self.variant: str = self.settings.variant_for(manifest)
        self.last_timings: dict[str, float] = {}

    @abstractmethod
    def load(self) -> None:
        """Open sessions and tokenizers; raise on a bad file."""

    @abstractmethod
    def validate(self, item: Any) -> Any:
        """Check and preprocess one item before it joins a batch; raise InputError if bad."""

    @abstractmethod
    def predict(self, items: list[Any], **options: Any) -> list[dict]:
        """Run a batch of validated items; one result dict per item, in order.

        Each result holds the task's answer plus ``"features"``: a dict whose keys are
        the manifest's ``reference_profile.features`` names (token count, unknown-token
        rate, predicted class, top confidence, ...) with this item's live value, for
        drift monitoring. The service strips ``features`` before answering. After each
        call ``self.last_timings`` holds seconds spent in "preprocess", "inference" and
        "postprocess" for the whole batch.
        """

    def warmup(self) -> None:
        """Run one tiny batch so the first real request pays no lazy-init cost."""
