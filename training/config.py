"""Training configuration: pydantic models, presets and command-line overrides.

A run is a set of per-model configs (:class:`ModelConfig` subclasses, one per family).
Each family gives the raw preset dicts (``smoke``, ``quick``, ``full``); the CLI layers
``--config FILE`` (JSON or TOML, ``{model: {section: {field: value}}}``), ``--data
name=path`` and ``--set name.section.field=value`` on top, then validates. Every error
names the model and the field.
"""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelkit.manifest import GateCriterion

PRESETS = ("smoke", "quick", "full")
Preset = Literal["smoke", "quick", "full"]


class ConfigError(ValueError):
    """A config value, override or file is invalid; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), validate_assignment=True)


class DataConfig(_Strict):
    """Where examples come from and how they are split."""

    path: str | None = None  # user data (CSV/JSONL); None = the family's built-in dataset
    max_examples: int | None = Field(None, ge=10)  # seeded subsample (smoke/quick presets)
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.1, gt=0, lt=0.5)
    seed: int = 13


class TrainConfig(_Strict):
    """Generic trainer settings (training/trainer.py)."""

    epochs: int = Field(3, ge=1)
    # global batch: all processes together (under torchrun each takes a share of its rows), and
    # lr is the rate for that batch; neither is rescaled by the process count, so one process and
    # N processes train the same recipe
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int = Field(256, ge=1)  # per process
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    schedule: Literal["linear", "cosine"] = "linear"
    grad_clip: float = Field(1.0, gt=0)
    patience: int = Field(2, ge=1)  # early stopping: epochs without validation improvement
    max_steps_per_epoch: int | None = Field(None, ge=1)  # cap (smoke preset)
    # wall-clock budget of the training loop (validation included): the learning-rate schedule
    # follows max(step / total steps, elapsed / budget) and training ends when either reaches 1
    max_minutes: float | None = Field(None, gt=0)
    monitor: str | None = None  # validation metric for early stopping; None = family's headline metric
    seed: int = 13
    threads: int | None = Field(None, ge=1)  # torch intra-op threads; None = torch default
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = CUDA when torch sees a GPU
    progress: bool = True  # tqdm bar
    # resumable runs: a checkpoint every N optimizer steps (and after every epoch); None = epochs only
    checkpoint_every: int | None = Field(500, ge=1)
    # exponential moving average of the weights (decay per optimizer step): validation, the kept best
    # weights and the export use the average; None = the raw weights
    ema_decay: float | None = Field(None, gt=0, lt=1)


class ExportConfig(_Strict):
    """ONNX export, parity and quantization."""

    opset: int = Field(17, ge=17)
    exporters: list[Literal["legacy", "dynamo"]] = Field(default_factory=lambda: ["legacy", "dynamo"], min_length=1)
    parity_inputs: int = Field(256, ge=1)  # held-out items run through torch and onnxruntime
    parity_tolerance: float = Field(1e-4, gt=0)
    quantize: bool = True
    int8_min_agreement: float = Field(0.9, ge=0, le=1)  # int8 vs torch argmax agreement for int8 parity to pass
    latency_batch: int = Field(32, ge=1)
    latency_repeats: int = Field(20, ge=1)


class GateConfig(_Strict):
    """Quality criteria a model must meet to become servable (LATEST)."""

    criteria: list[GateCriterion] = Field(default_factory=list)


class ModelConfig(_Strict):
    """One model's config. Families subclass it to narrow ``data`` and ``model``."""

    family: str
    data: DataConfig = Field(default_factory=DataConfig)
    model: BaseModel
    train: TrainConfig = Field(default_factory=TrainConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    gate: GateConfig = Field(default_factory=GateConfig)


def deep_merge(base: dict, update: dict) -> dict:
    """``base`` with ``update`` merged in recursively (new dict)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_value(text: str) -> Any:
    """A CLI value: JSON when it parses (numbers, true/false/null, lists), else the raw string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_override(raw: dict[str, dict], assignment: str, model_names: list[str]) -> None:
    """Apply ``model.section.field=value`` (or ``section.field=value`` for every model) in place."""
    key, sep, value = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. sentiment.train.epochs=2")
    parts = key.strip().split(".")
    targets = [parts[0]] if parts[0] in raw else model_names
    path = parts[1:] if parts[0] in raw else parts
    if parts[0] not in raw and len(parts) >= 3:
        raise ConfigError(f"--set {key}: unknown model {parts[0]!r} (selected: {', '.join(model_names)})")
    if not path:
        raise ConfigError(f"--set {key}: name a field, e.g. {key}.train.epochs=2")
    for name in targets:
        node = raw[name]
        for p in path[:-1]:
            if not isinstance(node.get(p, {}), dict):
                raise ConfigError(f"--set {name}.{'.'.join(path)}: {p!r} is not a section")
            node = node.setdefault(p, {})
        node[path[-1]] = parse_value(value)


def load_config_file(path: str | Path) -> dict:
    """A JSON or TOML file ``{model: {section: {field: value}}}``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        if p.suffix == ".toml":
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        else:
            data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{p}: not valid {'TOML' if p.suffix == '.toml' else 'JSON'}: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"{p}: expected an object of model name -> config sections")
    return data


def format_validation_error(model: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in (model, *err["loc"]))
        got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
        lines.append(f"  {loc}: {err['msg']}{got}")
    return f"invalid config for {model}:\n" + "\n".join(lines)


def validate_config(model: str, cls: type[ModelConfig], raw: dict) -> ModelConfig:
    """Validate one model's raw dict; ConfigError naming every bad field."""
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(model, exc)) from None
