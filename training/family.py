"""The model-family interface: everything the generic pipeline needs from one kind of model.

How to add a family
-------------------
1. Write ONE module ``training/families/<family>.py`` with a :class:`Family` subclass and a
   module-level ``MODELS: dict[str, Family]`` mapping model names (``"fashion"``, ``"de-en"``)
   to configured instances. Add the module name to ``FAMILY_MODULES`` in
   ``training/families/__init__.py`` if it is not listed (the three planned ones are); nothing
   else registers it. A module that does not exist yet is skipped; one that fails to import is
   an error.
2. Give it a config class (subclass :class:`training.config.ModelConfig`, narrowing ``model``
   to your own pydantic params and, if needed, ``data`` to a DataConfig subclass) and
   ``presets()`` returning raw dicts for ``smoke`` (seconds, for tests), ``quick`` (the
   default, 2-core CPU) and ``full`` (GPU). Include ``gate.criteria``.
3. Implement the abstract methods below. The pipeline (training/pipeline.py) calls them in
   this order:

   ``prepare_data`` -> ``baselines`` -> ``build_model`` -> trainer loop over ``batches`` /
   ``loss`` with ``validate`` (``val_outputs`` then ``val_metrics``) each epoch (early
   stopping on ``cfg.train.monitor`` or the family's ``headline_metric``, higher is better) -> ``write_assets`` (tokenizer / preprocessing
   files into the staging folder, manifest pre/post-processing) -> ``export_graphs`` (the
   pipeline exports every :class:`GraphExport` with the legacy and dynamo exporters, checks
   parity on its ``sample_inputs``, times both, keeps the faster passing one, quantizes int8)
   -> ``evaluate`` (on the test split, THROUGH the torch-free runtime
   ``modelkit.runtimes.create_runtime`` over the exported graphs, once per variant) ->
   ``reference_profile`` -> ``plots`` -> gate -> model card -> ``modelkit.registry.publish``.

4. Serving code for the family lives in ``modelkit/`` (torch-free) and is registered by task
   in ``modelkit/runtimes/__init__.py``; ``evaluate`` must use it so that serving and
   evaluation cannot disagree.

Distributed runs (``torchrun``, see training/distributed.py): every rank calls ``batches``
with the same seed and keeps its share of each global batch's rows, so ``batches`` must be
deterministic given its seed and build every tensor with rows on dim 0. ``loss`` may get the
model wrapped in DistributedDataParallel (use ``training.distributed.unwrap`` for attributes).

Devices: the trainer moves the model to ``cfg.train.device`` (CUDA when available with "auto")
and moves each training batch's tensors before ``loss``; ``validate`` gets the model on that
device and must move its own batches (``training.trainer.model_device(model)``). After
training the model is back on CPU for export.

Errors: raise :class:`DataError` (message names file and line) for bad data and
:class:`training.config.ConfigError` for bad settings; the CLI prints them and exits 2 with
nothing published.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from modelkit.manifest import (
    DatasetInfo,
    GenerationConfig,
    Postprocessing,
    Preprocessing,
    ReferenceProfile,
    Task,
)
from modelkit.profile import categorical_histogram, numeric_histogram

from .config import ModelConfig

if TYPE_CHECKING:  # torch is only needed by the methods that take models
    import torch

    from modelkit.runtimes.base import Runtime


class DataError(ValueError):
    """Bad input data; the message names the file (and line) at fault."""


@dataclass
class Split:
    """One split: inputs ``x`` and targets ``y`` (class ids, multi-hot rows or target strings)."""

    x: list
    y: Any

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class Splits:
    train: Split
    val: Split
    test: Split
    labels: list[str]  # empty for translation
    dataset: DatasetInfo  # source, licence, sha256 fingerprint, split sizes, seed
    state: dict[str, Any] = field(default_factory=dict)  # family-specific (e.g. a trained tokenizer)


@dataclass
class GraphExport:
    """One graph to export: a torch module returning ``output_names`` in order."""

    role: str  # "model" for classifiers; "encoder"/"decoder"/... for seq2seq
    module: "torch.nn.Module"
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]  # e.g. {"input_ids": {0: "batch", 1: "sequence"}}
    sample_inputs: list[dict[str, np.ndarray]]  # batches of held-out inputs: export, parity, latency


@dataclass
class Assets:
    """What ``write_assets`` wrote into the staging folder, for the manifest."""

    preprocessing: Preprocessing
    postprocessing: Postprocessing
    generation: GenerationConfig | None = None


@dataclass
class Evaluation:
    """Test-split results through a runtime (one variant)."""

    metrics: dict[str, float]
    predictions: list  # one hashable top-1 answer per item (int8 vs fp32 agreement)
    features: list[dict[str, Any]]  # runtime "features" per item (reference profile)
    details: dict[str, Any] = field(default_factory=dict)  # e.g. y_true / y_pred for plots


class Family(ABC):
    """One kind of model. Instances are configured per model name (see ``MODELS``)."""

    task: ClassVar[Task]
    config_class: ClassVar[type[ModelConfig]]
    headline_metric: ClassVar[str]  # the test metric shown in the registry table and gated by default
    in_default_run: ClassVar[bool] = True  # trained by `train` when no --models is given

    def __init__(self, name: str):
        self.name = name

    # --- configuration ------------------------------------------------------------
    @abstractmethod
    def presets(self) -> dict[str, dict]:
        """Raw config dicts for "smoke", "quick" and "full" (validated by ``config_class``)."""

    # --- data and baselines -------------------------------------------------------
    @abstractmethod
    def prepare_data(self, cfg: ModelConfig, data_dir: Path) -> Splits:
        """Load (or snapshot into ``data_dir``) and split the data; raise DataError when bad."""

    @abstractmethod
    def baselines(self, cfg: ModelConfig, splits: Splits) -> dict[str, dict[str, float]]:
        """Classical baselines fit on train, scored on test: {baseline name: metrics}."""

    # --- training (torch) ---------------------------------------------------------
    @abstractmethod
    def build_model(self, cfg: ModelConfig, splits: Splits) -> "torch.nn.Module":
        """A fresh model (seeded by the trainer before this call)."""

    @abstractmethod
    def batches(
        self, cfg: ModelConfig, splits: Splits, split: str, *, shuffle: bool, seed: int
    ) -> Iterable[dict[str, "torch.Tensor"]]:
        """Batches of the named split ("train"/"val"/"test") as tensors for ``loss``."""

    @abstractmethod
    def loss(self, model: "torch.nn.Module", batch: dict[str, "torch.Tensor"]) -> "torch.Tensor":
        """Scalar training loss of one batch."""

    def batch_weight(self, batch: dict[str, "torch.Tensor"]) -> float:
        """What ``loss`` averages over in ``batch`` (rows by default; tokens for a token-mean loss).

        Under torchrun each rank takes a share of the rows of a global batch; the trainer weighs
        each share's loss by its weight so the summed gradient equals the one-process gradient.
        """
        return float(len(next(v for v in batch.values() if hasattr(v, "shape"))))

    @abstractmethod
    def val_outputs(self, model: "torch.nn.Module", cfg: ModelConfig, splits: Splits, rows: np.ndarray) -> list:
        """Per-row outputs (picklable; e.g. class probabilities) for validation ``rows``, in order.

        Eval mode, no grad. Under torchrun every rank computes its own share of the rows.
        """

    @abstractmethod
    def val_metrics(self, outputs: list, cfg: ModelConfig, splits: Splits) -> dict[str, float]:
        """Validation metrics from the outputs of every validation row; include the monitored one."""

    def validate(self, model: "torch.nn.Module", cfg: ModelConfig, splits: Splits) -> dict[str, float]:
        """Validation metrics of the torch model over the whole validation split."""
        return self.val_metrics(self.val_outputs(model, cfg, splits, np.arange(len(splits.val))), cfg, splits)

    # --- export and evaluation ----------------------------------------------------
    @abstractmethod
    def write_assets(self, model: "torch.nn.Module", cfg: ModelConfig, splits: Splits, staging: Path) -> Assets:
        """Write tokenizer / preprocessing files into ``staging``; say how to pre/post-process."""

    @abstractmethod
    def export_graphs(self, model: "torch.nn.Module", cfg: ModelConfig, splits: Splits) -> list[GraphExport]:
        """The graphs to export, each with >= cfg.export.parity_inputs held-out sample rows."""

    @abstractmethod
    def evaluate(self, runtime: "Runtime", cfg: ModelConfig, splits: Splits) -> Evaluation:
        """Test metrics computed from ``runtime.predict`` outputs (sklearn / sacrebleu)."""

    def reference_profile(self, evaluation: Evaluation, splits: Splits) -> ReferenceProfile:
        """Histograms of the runtime's per-item features: strings categorical, numbers numeric."""
        feats = evaluation.features
        if not feats:
            raise ValueError(f"{self.name}: no features to profile")
        hists = {}
        for key in feats[0]:
            values = [f[key] for f in feats]
            if isinstance(values[0], str):
                cats = list(splits.labels) if set(values) <= set(splits.labels) else sorted(set(values))
                hists[key] = categorical_histogram(values, cats)
            else:
                hists[key] = numeric_histogram([float(v) for v in values])
        return ReferenceProfile(split="test", n_samples=len(feats), features=hists)

    def plots(self, evaluation: Evaluation, splits: Splits, out_dir: Path) -> list[Path]:
        """Task-specific plots (confusion matrix, per-label F1); curves are drawn by the trainer."""
        return []

    def description(self, cfg: ModelConfig, preset: str) -> str:
        """The manifest's one-line description."""
        return f"{self.__class__.__name__} trained from scratch with the {preset} preset."

    def card_notes(self, cfg: ModelConfig, splits: Splits) -> dict[str, str]:
        """Model-card sections: {"data": ..., "intended use": ..., "limits": ...}."""
        return {}
