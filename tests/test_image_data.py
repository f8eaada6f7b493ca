"""Image data: Fashion-MNIST IDX files and user image folders (errors name the file)."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modelkit.image import encode_png
from modelkit.manifest import ImagePreprocessing
from training.data import fashion
from training.data.fashion import FILES, load_fashion_mnist, read_idx
from training.data.image_folder import load_image_folder, pixel_hashes
from training.family import DataError

PREP = ImagePreprocessing(image_size=28, channels=1, mean=[0.0], std=[1.0])


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, *, compress: bool = True) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def fake_fashion_dir(tmp_path: Path, n_train: int = 200, n_test: int = 50) -> Path:
    rng = np.random.default_rng(0)
    write_idx(tmp_path / FILES["train_images"], rng.integers(0, 256, (n_train, 28, 28)))
    write_idx(tmp_path / FILES["train_labels"], np.arange(n_train) % 10)
    write_idx(tmp_path / FILES["test_images"], rng.integers(0, 256, (n_test, 28, 28)))
    write_idx(tmp_path / FILES["test_labels"], np.arange(n_test) % 10)
    return tmp_path


# --- IDX ----------------------------------------------------------------------------------


def test_read_idx_roundtrip_gzip_and_plain(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a.gz", a)), a)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a.idx", a, compress=False)), a)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "file is empty"),
        (b"\x1f\x8b\x08\x00garbage", "corrupt gzip"),
        (b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00\x00\x00\x00", "not an unsigned-byte IDX"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x03", "truncated IDX header"),
        (idx_bytes(np.zeros((4, 5)))[:-3], "holds 17"),
    ],
)
def test_read_idx_errors_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.gz"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_missing_idx_file_says_which_package(tmp_path):
    with pytest.raises(DataError, match="dataset-fashion-mnist") as err:
        read_idx(tmp_path / "nope.gz")
    assert "nope.gz" in str(err.value)


def test_label_count_mismatch_and_unknown_label(tmp_path):
    d = fake_fashion_dir(tmp_path)
    write_idx(d / FILES["test_labels"], np.zeros(49))
    with pytest.raises(DataError, match="50 images but .* 49 labels"):
        load_fashion_mnist(d)
    write_idx(d / FILES["test_labels"], np.full(50, 12))
    with pytest.raises(DataError, match="unknown label id 12"):
        load_fashion_mnist(d)


def test_fashion_splits_seeded_disjoint_and_fingerprinted(tmp_path):
    d = fake_fashion_dir(tmp_path)
    # a training image identical to a test image must not survive (leak)
    train = read_idx(d / FILES["train_images"]).copy()
    test = read_idx(d / FILES["test_images"])
    train[7] = test[3]
    write_idx(d / FILES["train_images"], train)

    a = load_fashion_mnist(d, seed=1, val_fraction=0.2)
    b = load_fashion_mnist(d, seed=1, val_fraction=0.2)
    c = load_fashion_mnist(d, seed=2, val_fraction=0.2)
    assert a.dataset.split_sizes == {"train": 159, "val": 40, "test": 50}
    assert a.dataset.fingerprint == b.dataset.fingerprint != c.dataset.fingerprint
    assert len(a.dataset.fingerprint) == 64
    keys = {name: set(pixel_hashes(getattr(a, name).x)) for name in ("train", "val", "test")}
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"] and not keys["val"] & keys["test"]
    # stored in the catalogue convention: 255 - IDX pixels
    assert np.array_equal(a.test.x, 255 - test)
    assert a.labels == fashion.LABELS


def test_fashion_subsample_keeps_every_label(tmp_path):
    d = fake_fashion_dir(tmp_path)
    s = load_fashion_mnist(d, max_examples=100, max_test=20, val_fraction=0.1)
    assert s.dataset.split_sizes == {"train": 90, "val": 10, "test": 20}
    assert set(np.unique(s.train.y)) == set(range(10))


@pytest.mark.skipif(not fashion.DEFAULT_DIR.is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_real_fashion_mnist_files_load():
    images = read_idx(fashion.DEFAULT_DIR / FILES["test_images"])
    labels = read_idx(fashion.DEFAULT_DIR / FILES["test_labels"])
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert np.bincount(labels).tolist() == [1000] * 10


# --- image folders -------------------------------------------------------------------


def make_folder(root: Path, per_label: int = 6, labels=("boot", "shirt")) -> Path:
    rng = np.random.default_rng(1)
    for label in labels:
        (root / label).mkdir(parents=True)
        for i in range(per_label):
            img = rng.integers(0, 256, (20 + i, 24), dtype=np.uint8)
            fmt = "png" if i % 2 else "jpg"
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG" if fmt == "png" else "JPEG")
            (root / label / f"{i}.{fmt}").write_bytes(buf.getvalue())
    return root


def test_image_folder_splits(tmp_path):
    root = make_folder(tmp_path / "data", per_label=10)
    # an exact duplicate under the same label is kept once
    (root / "boot" / "dup.png").write_bytes((root / "boot" / "1.png").read_bytes())
    s = load_image_folder(root, PREP, seed=3, validation_fraction=0.2, test_fraction=0.2)
    assert s.labels == ["boot", "shirt"]
    assert sum(s.dataset.split_sizes.values()) == 20
    assert s.train.x.shape[1:] == (28, 28) and s.train.x.dtype == np.uint8
    keys = [set(pixel_hashes(getattr(s, n).x)) for n in ("train", "val", "test")]
    assert sum(len(k) for k in keys) == len(set().union(*keys)) == 20
    again = load_image_folder(root, PREP, seed=3, validation_fraction=0.2, test_fraction=0.2)
    assert again.dataset.fingerprint == s.dataset.fingerprint


def test_image_folder_unreadable_image_names_file(tmp_path):
    root = make_folder(tmp_path / "data")
    bad = root / "shirt" / "broken.png"
    bad.write_bytes(b"not really a png")
    with pytest.raises(DataError, match="unreadable image") as err:
        load_image_folder(root, PREP)
    assert str(bad) in str(err.value)


def test_image_folder_empty_label_folder(tmp_path):
    root = make_folder(tmp_path / "data")
    (root / "hat").mkdir()
    (root / "hat" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="no .png/.jpg/.jpeg images") as err:
        load_image_folder(root, PREP)
    assert "hat" in str(err.value)


def test_image_folder_unknown_label(tmp_path):
    root = make_folder(tmp_path / "data")
    with pytest.raises(DataError, match="unknown label 'shirt'"):
        load_image_folder(root, PREP, labels=["boot", "coat"])


def test_image_folder_missing_or_without_labels(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_image_folder(tmp_path / "absent", PREP)
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(encode_png(np.zeros((4, 4), np.uint8)))
    with pytest.raises(DataError, match="no label folders"):
        load_image_folder(tmp_path / "flat", PREP)


def test_image_folder_same_image_two_labels(tmp_path):
    root = make_folder(tmp_path / "data")
    (root / "shirt" / "copy.png").write_bytes((root / "boot" / "1.png").read_bytes())
    with pytest.raises(DataError, match="same image as .* labelled 'shirt' vs 'boot'"):
        load_image_folder(root, PREP)


# --- through the family (config -> data) ------------------------------------------------


def test_family_reads_a_user_folder_with_its_own_size_and_channels(tmp_path):
    from training.config import ConfigError, validate_config
    from training.families.vit import MODELS, ViTModelConfig

    root = make_folder(tmp_path / "data", per_label=10, labels=("cat", "dog", "fox"))
    family = MODELS["fashion"]
    raw = family.presets()["smoke"]
    raw["data"] = {"path": str(root), "val_fraction": 0.2, "test_fraction": 0.2}
    raw["model"] = {**raw["model"], "image_size": 16, "channels": 3, "patch_size": 4}
    cfg = validate_config("fashion", ViTModelConfig, raw)
    splits = family.prepare_data(cfg, tmp_path)
    prep = splits.state["prep"]
    assert splits.labels == ["cat", "dog", "fox"]
    assert (prep.image_size, prep.channels, prep.invert) == (16, 3, False)
    assert len(prep.mean) == len(prep.std) == 3
    assert family.tensors(splits, "train").shape == (len(splits.train), 3, 16, 16)
    assert splits.dataset.source.startswith("image folder")

    raw["data"] = {}
    with pytest.raises(ConfigError, match="28x28 greyscale"):
        family.prepare_data(validate_config("fashion", ViTModelConfig, raw), tmp_path)
    raw["model"]["patch_size"] = 5
    with pytest.raises(ConfigError, match="not a multiple of patch_size"):
        validate_config("fashion", ViTModelConfig, raw)
