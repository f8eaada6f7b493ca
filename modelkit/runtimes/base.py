"""A runtime serves one registered model version: ``load()`` then ``predict()``.

The service knows nothing else about a model (MLServer-style). Runtimes are torch-free:
they use onnxruntime, numpy and the family's own pre/post-processing in ``modelkit``.
Training evaluates exported graphs through the same runtimes, so serving and
evaluation cannot disagree.

The base class owns what every runtime shares (KServe's ``Model`` does the same): the
empty batch and the timing of the three stages. A runtime implements ``preprocess``,
``infer`` and ``postprocess``; request options and their bounds belong to the service's
task specs (``service/tasks``), so a runtime trusts the options it is given.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from ..manifest import Manifest, Task
from ..onnx_session import SessionSettings

STAGES = ("preprocess", "inference", "postprocess")


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
        """Check (and, where cheap per item, preprocess) one item before it joins a batch;
        raise InputError naming the field and the limit if it is bad."""

    def predict(self, items: list[Any], **options: Any) -> list[dict]:
        """Run a batch of items; one result dict per item, in order.

        Each result holds the task's answer plus ``"features"``: a dict whose keys include
        the manifest's ``reference_profile.features`` names (token count, unknown-token
        rate, predicted class, top confidence, ...) with this item's live value, for drift
        monitoring and input-size metrics. The service strips ``features`` before answering.
        After each call ``self.last_timings`` holds the seconds spent in each of ``STAGES``.
        """
        if not items:
            self.last_timings = dict.fromkeys(STAGES, 0.0)
            return []
        t0 = time.perf_counter()
        batch = self.preprocess(items, **options)
        t1 = time.perf_counter()
        outputs = self.infer(batch)
        t2 = time.perf_counter()
        results = self.postprocess(batch, outputs)
        self.last_timings = {"preprocess": t1 - t0, "inference": t2 - t1, "postprocess": time.perf_counter() - t2}
        return results

    @abstractmethod
    def preprocess(self, items: list[Any], **options: Any) -> Any:
        """Validated (or raw) items and options -> whatever ``infer`` and ``postprocess`` need."""

    @abstractmethod
    def infer(self, batch: Any) -> Any:
        """The graph call(s) on a preprocessed batch."""

    @abstractmethod
    def postprocess(self, batch: Any, outputs: Any) -> list[dict]:
        """Graph outputs -> one result dict per item (see ``predict``)."""

    def warmup(self) -> None:
        """Run one tiny batch so the first real request pays no lazy-init cost."""
