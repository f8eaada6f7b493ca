"""Pretrained text encoders in the registry: ``<registry>/.pretrained/<name>/<version>/`` + ``LATEST``.

Written by ``python -m training pretrain`` (training/pretrain.py), read by the text classifiers
(``model.pretrained``). A version folder holds the encoder (``config.json`` +
``model.safetensors``, a transformers ``BertModel``), its WordPiece ``tokenizer.json``, the keys
of every text it saw (``corpus_keys.npy``: sorted 64-bit hashes of normalised texts, so that a
fine-tuning run can prove its held-out texts were not among them), ``train_log.jsonl`` and its own
manifest ``pretrain.json``. The folder is hidden so that the serving side's registry scans
never take it for a model.
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from modelkit.manifest import FileEntry

from .config import ConfigError

PRETRAINED_DIR = ".pretrained"
MANIFEST = "pretrain.json"
TOKENIZER = "tokenizer.json"
KEYS = "corpus_keys.npy"
LATEST = "LATEST"
DEFAULT_NAME = "text-encoder"
# what a fine-tuned classifier takes from the encoder instead of its own config
SHAPE_FIELDS = ("vocab_size", "min_frequency", "lowercase", "hidden_size", "num_layers", "num_heads", "intermediate_size")


class CorpusSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str
    texts: int  # distinct texts kept
    excluded: int  # texts dropped because a downstream held-out split holds them


class PretrainManifest(BaseModel):
    """What an encoder is, what it saw and how it was trained."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str
    version: str
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    objective: str = "masked language model (BERT-style: 15% of tokens, 80/10/10 mask/random/keep)"
    git_commit: str | None = None
    library_versions: dict[str, str] = Field(default_factory=dict)
    command: str
    preset: str
    config: dict
    corpus: dict[str, CorpusSource]
    corpus_fingerprint: str  # sha256 over the kept texts in training order
    held_out_excluded: list[str]  # the downstream splits whose texts were removed first
    sequences: dict[str, int]  # packed training / validation sequences
    tokens: int  # training tokens per epoch
    metrics: dict[str, float]  # validation (held-out corpus texts) of the kept weights
    duration_s: float
    device: str
    num_parameters: int
    files: list[FileEntry] = Field(default_factory=list)

    def dump(self, path: Path) -> None:
        path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> "PretrainManifest":
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))


def root_of(registry: Path, name: str) -> Path:
    return Path(registry) / PRETRAINED_DIR / name


def latest(registry: Path, name: str) -> Path | None:
    """The LATEST version folder of ``name``, or None when it was never pretrained."""
    pointer = root_of(registry, name) / LATEST
    if not pointer.is_file():
        return None
    folder = root_of(registry, name) / pointer.read_text(encoding="utf-8").strip()
    return folder if (folder / MANIFEST).is_file() else None


def is_artefact(path: Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def resolve(ref: str, registry: Path) -> Path | None:
    """``ref`` as a version folder: a folder path, ``name@version`` or ``name`` (its LATEST; None if absent)."""
    if "/" in ref or os.sep in ref:
        path = Path(ref).resolve()
        if not is_artefact(path):
            raise ConfigError(f"model.pretrained: {path} is not a pretrained encoder folder (no {MANIFEST})")
        return path
    name, _, version = ref.partition("@")
    if version:
        path = (root_of(registry, name) / version).resolve()
        if not is_artefact(path):
            raise ConfigError(f"model.pretrained: no pretrained encoder {name}@{version} under {root_of(registry, name)}")
        return path
    found = latest(registry, name)
    return found.resolve() if found is not None else None


def set_latest(registry: Path, name: str, version: str) -> None:
    """Point ``LATEST`` at ``version`` atomically."""
    folder = root_of(registry, name)
    fd, tmp = tempfile.mkstemp(prefix=".LATEST.", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(version + "\n")
    os.replace(tmp, folder / LATEST)


def load_manifest(folder: Path) -> PretrainManifest:
    return PretrainManifest.load(Path(folder) / MANIFEST)


def load_keys(folder: Path) -> np.ndarray:
    return np.load(Path(folder) / KEYS)


def summary(folder: Path) -> str:
    """One paragraph for model cards: which encoder, what it saw, what it did not."""
    m = load_manifest(folder)
    seen = "; ".join(f"{name}: {src.texts:,} texts ({src.description})" for name, src in m.corpus.items())
    return (
        f"Encoder pretrained as a {m.objective} ({m.name}/{m.version}, {m.num_parameters:,} parameters, "
        f"{m.duration_s:.0f} s on {m.device}, corpus sha256 `{m.corpus_fingerprint[:16]}`). It saw {seen}. "
        f"Removed from its corpus before anything else, and checked again at fine-tuning: "
        f"{'; '.join(m.held_out_excluded)}. It never saw a validation or test text of this model."
    )
