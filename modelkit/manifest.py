"""The manifest: the one contract between training and serving.

Every registered model version holds a ``manifest.json`` that validates against
:class:`Manifest`. Training writes it, the service and monitoring read it. This
module is torch-free on purpose.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION = 1

Task = Literal[
    "text-classification",
    "multi-label-classification",
    "translation",
    "image-classification",
]
Variant = Literal["fp32", "int8"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class TensorSpec(_Strict):
    """One graph input or output. Dynamic axes are named strings ("batch", "sequence")."""

    name: str
    dtype: str  # numpy dtype name: "int64", "float32"
    shape: list[int | str]


class GraphSpec(_Strict):
    """One ONNX graph file of a model version."""

    role: str  # "model" for classifiers; "encoder", "decoder", "decoder_with_past" (+ "decoder_step", "encoder_kv") for seq2seq
    variant: Variant
    path: str  # relative to the version folder
    opset: int
    exporter: Literal["legacy", "dynamo", "imported"]  # "imported": brought by `python -m training import`
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class FileEntry(_Strict):
    path: str  # relative to the version folder
    sha256: str
    size: int


class TextPreprocessing(_Strict):
    kind: Literal["text"] = "text"
    tokenizer_file: str  # a `tokenizers` JSON file, relative to the version folder
    max_length: int
    pad_token_id: int
    unk_token_id: int | None = None
    max_text_chars: int = 2000  # longer inputs are refused by the service


class ImagePreprocessing(_Strict):
    kind: Literal["image"] = "image"
    image_size: int  # square side the image is resized to
    channels: int  # 1 = greyscale, 3 = RGB
    mean: list[float]
    std: list[float]
    invert: bool = False  # True when training images are light-on-dark (Fashion-MNIST)
    max_bytes: int = 5_000_000
    max_pixels: int = 4096 * 4096


class TranslationPreprocessing(_Strict):
    kind: Literal["translation"] = "translation"
    tokenizer_file: str
    source_lang: str
    target_lang: str
    max_source_length: int
    pad_token_id: int
    bos_token_id: int
    eos_token_id: int
    decoder_start_token_id: int
    unk_token_id: int | None = None
    max_text_chars: int = 1000


Preprocessing = Annotated[
    Union[TextPreprocessing, ImagePreprocessing, TranslationPreprocessing],
    Field(discriminator="kind"),
]


class Postprocessing(_Strict):
    activation: Literal["softmax", "sigmoid", "none"]
    # multi-label decision thresholds: one global value or one per label
    thresholds: list[float] | None = None


class GenerationConfig(_Strict):
    """Decoding defaults and the limits the service enforces."""

    num_beams: int = 1
    max_new_tokens: int = 64
    length_penalty: float = 1.0
    max_num_beams: int = 8
    max_max_new_tokens: int = 256
    num_decoder_layers: int
    num_heads: int
    head_dim: int


class Histogram(_Strict):
    """A binned reference distribution.

    Numeric features have ``edges`` (len(fractions) + 1 values; the first and last
    bins are open-ended when monitored). Categorical features have ``categories``.
    """

    kind: Literal["numeric", "categorical"]
    edges: list[float] | None = None
    categories: list[str] | None = None
    fractions: list[float]

    @model_validator(mode="after")
    def _check_shape(self) -> "Histogram":
        n = len(self.fractions)
        if self.kind == "numeric" and (self.edges is None or len(self.edges) != n + 1):
            raise ValueError("numeric histogram needs len(edges) == len(fractions) + 1")
        if self.kind == "categorical" and (self.categories is None or len(self.categories) != n):
            raise ValueError("categorical histogram needs one category per fraction")
        if n and abs(sum(self.fractions) - 1.0) > 1e-3:
            raise ValueError(f"fractions sum to {sum(self.fractions)}, not 1")
        return self


class ReferenceProfile(_Strict):
    """Distributions drift monitoring compares live traffic with (held-out data)."""

    split: str = "test"
    n_samples: int
    features: dict[str, Histogram]


class GateCriterion(_Strict):
    metric: str  # e.g. "accuracy", "macro_f1", "chrf"
    min_value: float | None = None  # absolute floor
    baseline: str | None = None  # baseline name to compare with
    max_below_baseline: float | None = None  # allowed shortfall vs baseline (metric units)
    min_above_baseline: float | None = None  # required margin over baseline


class GateResult(_Strict):
    passed: bool
    criteria: list[GateCriterion]
    reasons: list[str]  # one line per criterion, pass or fail, human readable


class ParityResult(_Strict):
    variant: Variant
    n_inputs: int
    max_abs_diff: float
    tolerance: float | None  # None where no tolerance applies (int8 vs torch)
    passed: bool
    top1_agreement: float | None = None  # vs torch fp32 predictions
    notes: str | None = None


class DatasetInfo(_Strict):
    source: str
    licence: str | None = None
    fingerprint: str  # sha256 over the prepared examples
    split_sizes: dict[str, int]
    seed: int


class TrainingInfo(_Strict):
    preset: str
    command: str
    config: dict
    duration_s: float
    device: str
    num_parameters: int
    world_size: int = Field(1, ge=1)  # training processes (torchrun)


class ExporterComparison(_Strict):
    """Latency of each exporter's graph; the faster one passing parity is kept."""

    chosen: Literal["legacy", "dynamo"]
    latency_ms: dict[str, float | None]
    notes: dict[str, str] = Field(default_factory=dict)


class Manifest(_Strict):
    schema_version: int = SCHEMA_VERSION
    name: str
    version: str
    task: Task
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    git_commit: str | None = None
    library_versions: dict[str, str] = Field(default_factory=dict)
    description: str = ""

    labels: list[str] = Field(default_factory=list)  # empty for translation
    graphs: list[GraphSpec]
    preprocessing: Preprocessing
    postprocessing: Postprocessing
    generation: GenerationConfig | None = None

    # metrics per variant ("fp32", "int8"), then per baseline name
    metrics: dict[str, dict[str, float]]
    baseline_metrics: dict[str, dict[str, float]]
    headline_metric: str
    gate: GateResult
    parity: list[ParityResult]
    exporters: ExporterComparison | None = None

    files: list[FileEntry]
    dataset: DatasetInfo
    training: TrainingInfo
    reference_profile: ReferenceProfile

    @model_validator(mode="after")
    def _check_task_fields(self) -> "Manifest":
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(f"schema_version {self.schema_version} unsupported (expected {SCHEMA_VERSION})")
        if self.task == "translation":
            if self.generation is None or self.preprocessing.kind != "translation":
                raise ValueError("translation manifests need generation and translation preprocessing")
        elif not self.labels:
            raise ValueError(f"task {self.task} needs labels")
        if self.task == "multi-label-classification":
            t = self.postprocessing.thresholds
            if self.postprocessing.activation != "sigmoid" or not t or len(t) not in (1, len(self.labels)):
                raise ValueError("multi-label manifests need sigmoid and 1 or len(labels) thresholds")
        return self

    def graph(self, role: str, variant: Variant = "fp32") -> GraphSpec:
        """The graph with this role and variant; KeyError naming what exists otherwise."""
        for g in self.graphs:
            if g.role == role and g.variant == variant:
                return g
        have = [(g.role, g.variant) for g in self.graphs]
        raise KeyError(f"{self.name}/{self.version}: no graph role={role} variant={variant}; has {have}")

    def variants(self) -> list[str]:
        return sorted({g.variant for g in self.graphs})

    @classmethod
    def load(cls, path: str | Path) -> "Manifest":
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))

    def dump(self, path: str | Path) -> None:
        Path(path).write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
