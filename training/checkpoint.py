"""Training checkpoints: one file per model, replaced atomically, loadable with ``weights_only``.

Beside it, ``data.pkl`` keeps the prepared data of the run (splits and the family's state,
e.g. the trained tokenizer): the tokenizers' trainers are not deterministic from run to run
(the WordPiece vocabulary's ties and ids vary), so a resumed run must reuse the tokenizer its
weights were trained with rather than train a new one. It is a pickle: keep checkpoint folders
as private as the code.

A checkpoint holds the model, optimizer and scheduler states, every rank's RNG states, the
data position (epoch, batches taken in it), the best-so-far weights and metric, the logs so far,
and the recipe it was written for (config and data fingerprint): ``--resume`` refuses a
checkpoint whose recipe differs and names the fields.
"""

from __future__ import annotations

import json
import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import ConfigError, ModelConfig

CHECKPOINT_FILE = "checkpoint.pt"
DATA_FILE = "data.pkl"
PUBLISHED_FILE = "published.json"  # what a finished run published: --resume does not train it again
FORMAT = 1
# settings that do not change what is trained: a resumed run may change them
NOT_RECIPE = {("train", "progress"), ("train", "threads"), ("train", "device"), ("train", "checkpoint_every")}


def checkpoint_path(root: Path, model_name: str) -> Path:
    return Path(root) / model_name / CHECKPOINT_FILE


def recipe(cfg: ModelConfig, fingerprint: str) -> dict[str, Any]:
    """Flat {dotted field: value} of everything that decides the training trajectory."""
    flat: dict[str, Any] = {"data.fingerprint": fingerprint, "family": cfg.family}
    for section in ("data", "model", "train"):
        for key, value in getattr(cfg, section).model_dump(mode="json").items():
            if (section, key) not in NOT_RECIPE:
                flat[f"{section}.{key}"] = value
    return flat


def check_recipe(saved: dict[str, Any], current: dict[str, Any], label: str, path: Path) -> None:
    """ConfigError naming every field whose value differs from the checkpoint's."""
    fields = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
    if fields:
        detail = "; ".join(f"{label}.{k}: checkpoint {saved.get(k)!r}, now {current.get(k)!r}" for k in fields)
        raise ConfigError(f"--resume: {path} was written for another recipe ({detail}); "
                          "run without --resume to start over")


def rng_state() -> dict[str, Any]:
    """This process's RNG states in types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's device only (one GPU per process)
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _atomic_write(path: Path, write) -> None:
    """``write(file)`` into a temporary file next to ``path``, flush it to disk, then rename it over
    ``path``: a kill at any moment leaves the previous file or the new one, never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save(path: Path, payload: dict[str, Any]) -> None:
    _atomic_write(path, lambda f: torch.save({"format": FORMAT, **payload}, f))


def data_blob(splits: Any, cfg: ModelConfig) -> bytes:
    """The prepared data as ``save_data`` writes it; take it right after ``prepare_data``, before
    the families fill their caches (e.g. the ViT's float tensors)."""
    return pickle.dumps({"recipe": recipe(cfg, splits.dataset.fingerprint), "splits": splits}, protocol=5)


def save_data(folder: Path, blob: bytes) -> None:
    """The run's prepared data, for ``--resume``."""
    _atomic_write(Path(folder) / DATA_FILE, lambda f: f.write(blob))


def load_data(folder: Path, cfg: ModelConfig, label: str) -> Any | None:
    """The prepared data a run left in ``folder`` (None when there is none)."""
    path = Path(folder) / DATA_FILE
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        record = pickle.load(f)  # noqa: S301 - written by this code into the run's own folder
    splits = record["splits"]
    check_recipe(record["recipe"], recipe(cfg, splits.dataset.fingerprint), label, path)
    return splits


def load(path: Path) -> dict[str, Any]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != FORMAT:
        raise ConfigError(f"--resume: {path} has checkpoint format {payload.get('format')!r}, expected {FORMAT}")
    return payload


def remove(folder: Path) -> None:
    """Delete a run's checkpoint, data and published record (and the folder when nothing else is in it)."""
    for name in (CHECKPOINT_FILE, DATA_FILE, PUBLISHED_FILE):
        (Path(folder) / name).unlink(missing_ok=True)
    try:
        Path(folder).rmdir()
    except OSError:
        pass


def finish(folder: Path, cfg: ModelConfig, fingerprint: str, version: str) -> None:
    """The run published ``version``: drop checkpoint and data, keep a small record of it, so a
    restarted job (``--resume``) reports that version instead of training the model again."""
    remove(folder)
    record = {"version": version, "recipe": recipe(cfg, fingerprint)}
    _atomic_write(Path(folder) / PUBLISHED_FILE, lambda f: f.write(json.dumps(record, indent=1).encode()))


def published(folder: Path, cfg: ModelConfig) -> str | None:
    """The version a finished run of this recipe published (None if none, or another recipe's)."""
    path = Path(folder) / PUBLISHED_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    saved = dict(record["recipe"])
    current = recipe(cfg, saved.get("data.fingerprint", ""))  # the data are not prepared to check this
    return record["version"] if saved == current else None


def recipe_json(flat: dict[str, Any]) -> str:
    return json.dumps(flat, sort_keys=True)
