"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (IDX files, gzip).

Splits: validation is a seeded, stratified share of the 60k training set; test is the
official 10k test set. Training images that also occur (same pixels) in the test set,
and repeats inside the training set, are dropped so no image is in two splits.

Stored convention: the IDX files hold light garments on a black background. Clients of
the service send catalogue-style images (dark garment on a light background), so the
loader stores ``255 - pixels`` -- what a client would send -- and the manifest's
``invert: true`` turns them back into the original IDX pixels the model sees. Training,
evaluation and serving all go through :mod:`modelkit.image` on that stored form.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np

from ..family import DataError, Split, Splits
from .image_folder import make_splits, split_indices

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
SOURCE = "Fashion-MNIST (Debian package dataset-fashion-mnist, /usr/share/datasets/fashion-mnist)"
LICENCE = "MIT"
LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
_UBYTE = 0x08


def read_idx(path: str | Path) -> np.ndarray:
    """One IDX file (gzip-compressed or plain) as a uint8 array of its declared shape.

    Raises DataError naming the file when it is missing, empty, not gzip, truncated,
    or its header does not describe unsigned-byte data of the right length.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (install the Debian package dataset-fashion-mnist)")
    raw = path.read_bytes()
    if not raw:
        raise DataError(f"{path}: file is empty")
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: corrupt gzip data: {e}") from None
    if len(raw) < 4:
        raise DataError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
    zero, dtype, ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zero != 0 or dtype != _UBYTE or ndim == 0:
        raise DataError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()}, expected 000008xx)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(f"{path}: header declares shape {shape} = {expected} bytes of data, file holds {len(raw) - header}")
    if expected == 0:
        raise DataError(f"{path}: holds no items (shape {shape})")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) and labels (N,) with matching counts and valid label ids."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3:
        raise DataError(f"{images_path}: expected N x rows x cols images, got shape {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected a 1-D label array, got shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    bad = np.flatnonzero(labels >= len(LABELS))
    if bad.size:
        raise DataError(f"{labels_path}: item {bad[0]} has unknown label id {labels[bad[0]]} (0-{len(LABELS) - 1})")
    return images, labels.astype(np.int64)


def _hashes(images: np.ndarray) -> list[bytes]:
    return [hashlib.blake2b(img.tobytes(), digest_size=16).digest() for img in images]


def load_fashion_mnist(
    data_dir: str | Path = DEFAULT_DIR,
    *,
    seed: int = 13,
    val_fraction: float = 0.1,
    max_examples: int | None = None,
    max_test: int | None = None,
) -> Splits:
    """Seeded train/val/test Splits of Fashion-MNIST in the stored (catalogue) convention.

    ``max_examples`` caps train + val (seeded, stratified subsample) and ``max_test`` the
    test set, for the smoke preset.
    """
    d = Path(data_dir)
    train_x, train_y = read_pair(d / FILES["train_images"], d / FILES["train_labels"])
    test_x, test_y = read_pair(d / FILES["test_images"], d / FILES["test_labels"])

    # drop training images repeated inside train or present in test (no leakage)
    test_keys = set(_hashes(test_x))
    seen: set[bytes] = set()
    keep = []
    for i, key in enumerate(_hashes(train_x)):
        if key not in test_keys and key not in seen:
            keep.append(i)
        seen.add(key)
    train_x, train_y = train_x[keep], train_y[keep]

    rng = np.random.default_rng(seed)
    if max_examples is not None and max_examples < len(train_y):
        train_x, train_y = _subsample(train_x, train_y, max_examples, rng)
    if max_test is not None and max_test < len(test_y):
        test_x, test_y = _subsample(test_x, test_y, max_test, rng)

    fit, val, _ = split_indices(train_y, (val_fraction, 0.0), seed)
    splits = {
        "train": Split(255 - train_x[fit], train_y[fit]),
        "val": Split(255 - train_x[val], train_y[val]),
        "test": Split(255 - test_x, test_y),
    }
    return make_splits(splits, list(LABELS), source=SOURCE, seed=seed, licence=LICENCE)


def _subsample(x: np.ndarray, y: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A seeded subsample of n items with the label shares kept (about)."""
    order = rng.permutation(len(y))
    per_label = {label: order[y[order] == label] for label in np.unique(y)}
    take = np.concatenate([idx[: max(1, round(n * len(idx) / len(y)))] for idx in per_label.values()])
    take = np.sort(take[:n])
    return x[take], y[take]
