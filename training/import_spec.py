"""What ``python -m training import`` needs to know about a model it did not train.

One pydantic model, filled from a TOML/JSON spec file and/or command-line flags (flags win).
Relative paths in a spec file are relative to that file. Errors name the field.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from modelkit.manifest import Task

from .config import parse_value

PATH_FIELDS = ("model", "encoder", "decoder", "decoder_with_past", "tokenizer", "labels_file", "sample", "expected",
               "eval")
SEQ2SEQ_ROLES = ("encoder", "decoder", "decoder_with_past")
TEXT_TASKS = ("text-classification", "multi-label-classification")


class ImportRejected(ValueError):
    """The model, its files or the spec do not fit; the message names the field or the mismatch."""


class ImportSpec(BaseModel):
    """An existing ONNX model plus what serving needs around it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=64)
    task: Task
    version: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=64)
    description: str = ""
    source: str = "not described"  # where the model and its training data come from
    licence: str | None = None

    # graphs: `model` for classifiers; translators: encoder/decoder/decoder_with_past, or `model`
    # naming a folder that holds encoder.onnx, decoder.onnx and decoder_with_past.onnx
    model: Path | None = None
    encoder: Path | None = None
    decoder: Path | None = None
    decoder_with_past: Path | None = None
    output: str | None = None  # classifier output to serve (default: the graph's first output)

    tokenizer: Path | None = None  # a `tokenizers` JSON file (text and translation)
    labels: list[str] | None = None
    labels_file: Path | None = None  # one label per line, or a JSON list

    sample: Path  # unlabelled (or labelled) inputs: parity check and the drift reference profile
    min_sample: int = Field(20, ge=1)
    parity_items: int = Field(256, ge=1)
    tolerance: float = Field(1e-4, gt=0)
    expected: Path | None = None  # the model's own outputs (logits) on the first sample items: .json or .npy
    eval: Path | None = None  # labelled file: computes the headline metric
    min_metric: float | None = None  # gate: headline metric on `eval` must reach this

    # text
    max_length: int | None = Field(None, ge=3)
    max_text_chars: int = Field(2000, ge=1)
    thresholds: list[float] | None = None  # multi-label: one global value or one per label (default 0.5)

    # image
    image_size: int | None = Field(None, ge=1)
    channels: int | None = Field(None, ge=1)
    mean: list[float] | None = None
    std: list[float] | None = None
    invert: bool = False

    # translation
    source_lang: str | None = None
    target_lang: str | None = None
    max_source_length: int = Field(128, ge=2)
    pad_token_id: int | None = None  # default: the tokenizer's <pad>, <s>, </s>, <unk>
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    decoder_start_token_id: int | None = None  # default: bos_token_id
    unk_token_id: int | None = None
    num_beams: int = Field(1, ge=1, le=8)
    max_new_tokens: int = Field(64, ge=1)
    max_max_new_tokens: int = Field(128, ge=1, le=1024)
    length_penalty: float = 1.0

    promote: bool = True  # make the version LATEST when it passes (like `train` does)

    @model_validator(mode="after")
    def _check_task_fields(self) -> "ImportSpec":
        t = self.task
        missing = []
        if t == "translation":
            if self.model is None and None in (self.encoder, self.decoder, self.decoder_with_past):
                missing.append("model (a folder with encoder.onnx, decoder.onnx, decoder_with_past.onnx) "
                               "or encoder + decoder + decoder_with_past")
            missing += [f for f in ("tokenizer", "source_lang", "target_lang") if getattr(self, f) is None]
            if self.labels or self.labels_file:
                raise ValueError("labels: translation models have no labels")
        else:
            if self.model is None:
                missing.append("model (the .onnx file)")
            if not self.labels and self.labels_file is None:
                missing.append("labels (or labels_file)")
            if t in TEXT_TASKS:
                missing += [f for f in ("tokenizer", "max_length") if getattr(self, f) is None]
            if t == "image-classification":
                missing += [f for f in ("mean", "std") if getattr(self, f) is None]
        if missing:
            raise ValueError(f"{t} needs: " + "; ".join(missing))
        if self.labels and self.labels_file is not None:
            raise ValueError("give labels or labels_file, not both")
        if self.thresholds is not None and t != "multi-label-classification":
            raise ValueError("thresholds: only for multi-label-classification")
        if self.min_metric is not None and self.eval is None:
            raise ValueError("min_metric needs an eval file to measure the metric on")
        return self

    def graph_files(self) -> dict[str, Path]:
        """Graph file per role."""
        if self.task != "translation":
            return {"model": self.model}
        if self.encoder is not None:
            return {r: getattr(self, r) for r in SEQ2SEQ_ROLES}
        return {r: self.model / f"{r}.onnx" for r in SEQ2SEQ_ROLES}


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ImportRejected(f"spec file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ImportRejected(f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {exc}") from None
    if not isinstance(data, dict):
        raise ImportRejected(f"{path}: expected a table/object of import settings")
    for key in PATH_FIELDS:  # relative to the spec file, not to where the command runs
        if isinstance(data.get(key), str) and not Path(data[key]).is_absolute():
            data[key] = str(path.parent / data[key])
    return data


def load_spec(spec_file: str | Path | None, flags: dict[str, Any], sets: list[str] = ()) -> ImportSpec:
    """Spec file, then flags that were given (not None), then ``--set KEY=VALUE`` (JSON values)."""
    raw = _read_file(Path(spec_file)) if spec_file else {}
    raw.update({k: v for k, v in flags.items() if v is not None})
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ImportRejected(f"--set {item!r}: expected KEY=VALUE, e.g. max_length=128")
        raw[key.strip()] = parse_value(value)
    try:
        spec = ImportSpec.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "spec"
            got = f" (got {err['input']!r})" if err["loc"] and not isinstance(err.get("input"), dict) else ""
            lines.append(f"  {loc}: {err['msg'].removeprefix('Value error, ')}{got}")
        raise ImportRejected("invalid import settings:\n" + "\n".join(lines)) from None
    if spec.labels_file is not None:
        spec.labels = read_labels(spec.labels_file)
    return spec


def read_labels(path: Path) -> list[str]:
    """Labels from a JSON list or a text file with one label per line (blank lines skipped)."""
    if not path.is_file():
        raise ImportRejected(f"labels_file: {path} not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        labels = json.loads(text)
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ImportRejected(f"labels_file: {path} must hold a JSON list of strings")
    else:
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise ImportRejected(f"labels_file: {path} holds no labels")
    return labels
