"""User image folders (``root/<label>/*.png|jpg``) and the split container all image data shares.

Images are decoded with the serving code (:mod:`modelkit.image`) into uint8 arrays at the
model's size, deduplicated by pixel content, and split with a seed (stratified when every
label has enough images), so no image lands in two splits.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from modelkit.image import decode_to_uint8
from modelkit.manifest import DatasetInfo, ImagePreprocessing
from modelkit.runtimes.base import InputError

from ..family import DataError, Split, Splits

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
SPLITS = ("train", "val", "test")


def fingerprint(splits: dict[str, Split], labels: list[str]) -> str:
    """sha256 over label names and every split's pixels and label ids, in split order."""
    h = hashlib.sha256()
    h.update("\n".join(labels).encode())
    for name in SPLITS:
        s = splits[name]
        h.update(f"|{name}|{s.x.shape}|".encode())
        h.update(np.ascontiguousarray(s.x).tobytes())
        h.update(np.ascontiguousarray(s.y, dtype=np.int64).tobytes())
    return h.hexdigest()


def make_splits(
    splits: dict[str, Split], labels: list[str], *, source: str, seed: int, licence: str | None = None
) -> Splits:
    """The pipeline's Splits with the dataset record (fingerprint, sizes) filled in."""
    info = DatasetInfo(
        source=source,
        licence=licence,
        fingerprint=fingerprint(splits, labels),
        split_sizes={name: len(splits[name]) for name in SPLITS},
        seed=seed,
    )
    return Splits(train=splits["train"], val=splits["val"], test=splits["test"], labels=labels, dataset=info)


def pixel_hashes(images: np.ndarray) -> list[bytes]:
    """Content hash of each image's pixels (duplicates detection)."""
    return [hashlib.sha256(np.ascontiguousarray(img).tobytes()).digest() for img in images]


def split_indices(
    labels: np.ndarray, fractions: tuple[float, float], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded train/validation/test index arrays; stratified when each label has >= 3 items."""
    val_frac, test_frac = fractions
    idx = np.arange(len(labels))
    stratify = labels if _min_count(labels) >= 3 else None
    holdout = val_frac + test_frac
    if holdout <= 0:
        return idx, idx[:0], idx[:0]
    train, rest = _split(idx, holdout, seed, stratify)
    if test_frac <= 0:
        return np.sort(train), np.sort(rest), idx[:0]
    if val_frac <= 0:
        return np.sort(train), idx[:0], np.sort(rest)
    rest_stratify = labels[rest] if stratify is not None and _min_count(labels[rest]) >= 2 else None
    val, test = _split(rest, test_frac / holdout, seed, rest_stratify)
    return np.sort(train), np.sort(val), np.sort(test)


def _split(idx: np.ndarray, test_size: float, seed: int, stratify: np.ndarray | None):
    try:
        return train_test_split(idx, test_size=test_size, random_state=seed, stratify=stratify)
    except ValueError:  # too few items per label for a stratified split of this size
        return train_test_split(idx, test_size=test_size, random_state=seed)


def _min_count(labels: np.ndarray) -> int:
    counts = np.bincount(labels)
    return int(counts[counts > 0].min())


def load_image_folder(
    root: str | Path,
    prep: ImagePreprocessing,
    *,
    seed: int = 0,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    labels: list[str] | None = None,
    max_per_label: int | None = None,
) -> Splits:
    """Read ``root/<label>/*.png|jpg|jpeg`` into seeded splits.

    ``labels`` (optional) fixes the label set and order; a folder not in it is an error.
    Raises DataError naming the folder or file: missing root, no label folders,
    a label folder without images, an unknown label, an unreadable image, or the same
    image under two labels. Exact duplicates under one label are kept once.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found (expected {root}/<label>/*.png|jpg)")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{root}: no label folders (expected {root}/<label>/*.png|jpg)")
    names = [p.name for p in folders]
    if labels is not None:
        unknown = [n for n in names if n not in labels]
        if unknown:
            raise DataError(f"{root / unknown[0]}: unknown label {unknown[0]!r}; expected one of {labels}")
        label_names = list(labels)
    else:
        label_names = names
    label_id = {name: i for i, name in enumerate(label_names)}

    images: list[np.ndarray] = []
    ids: list[int] = []
    seen: dict[bytes, Path] = {}
    duplicates = 0
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{folder}: label folder has no .png/.jpg/.jpeg images")
        if max_per_label:
            files = files[:max_per_label]
        for path in files:
            try:
                pixels = decode_to_uint8(path.read_bytes(), prep)
            except InputError as e:
                raise DataError(f"{path}: unreadable image: {e}") from None
            except OSError as e:
                raise DataError(f"{path}: cannot read file: {e}") from None
            key = hashlib.sha256(pixels.tobytes()).digest()
            if key in seen:
                first = seen[key]
                if first.parent.name != folder.name:
                    raise DataError(
                        f"{path}: same image as {first} but labelled {folder.name!r} vs {first.parent.name!r}"
                    )
                duplicates += 1
                continue
            seen[key] = path
            images.append(pixels)
            ids.append(label_id[folder.name])

    x = np.stack(images)
    y = np.asarray(ids, dtype=np.int64)
    train, val, test = split_indices(y, (validation_fraction, test_fraction), seed)
    splits = {"train": Split(x[train], y[train]), "val": Split(x[val], y[val]), "test": Split(x[test], y[test])}
    wanted = {"train": 1.0, "val": validation_fraction, "test": test_fraction}
    for name, split in splits.items():
        if len(split) == 0 and wanted[name] > 0:
            raise DataError(f"{root}: {len(y)} images are too few for a non-empty {name} split")
    if duplicates:
        log.warning("%s: dropped %d duplicate images", root, duplicates)
    return make_splits(splits, label_names, source=f"image folder {root.resolve()}", seed=seed)
