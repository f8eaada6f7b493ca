"""modelkit.image: training tensors and served tensors are the same numbers; bad bytes get 4xx."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from modelkit import image
from modelkit.manifest import ImagePreprocessing
from modelkit.runtimes.base import InputError
from training.config import validate_config
from training.families.vit import MODELS, ViTModelConfig

GREY = ImagePreprocessing(image_size=28, channels=1, mean=[0.3], std=[0.35], invert=True)
RGB = ImagePreprocessing(image_size=16, channels=3, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3])


def encode(array: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format=fmt)
    return buf.getvalue()


def small_splits(tmp_path):
    """Smoke-preset Fashion data through the family (skips where the Debian dataset is absent)."""
    family = MODELS["fashion"]
    cfg = validate_config("fashion", ViTModelConfig, family.presets()["smoke"])
    from training.data import fashion

    if not fashion.DEFAULT_DIR.is_dir():
        pytest.skip("Debian dataset-fashion-mnist not installed")
    return family, cfg, family.prepare_data(cfg, tmp_path)


def test_training_tensors_equal_served_tensors(tmp_path):
    family, cfg, splits = small_splits(tmp_path)
    prep = splits.state["prep"]
    trained_on = family.tensors(splits, "test")
    served = image.preprocess_bytes([image.encode_png(x) for x in splits.test.x], prep)
    assert trained_on.dtype == served.dtype == np.float32
    assert trained_on.shape == served.shape == (len(splits.test), 1, 28, 28)
    assert np.array_equal(trained_on, served)
    # invert=True: the model sees the original light-on-dark IDX pixels
    raw = 255 - splits.test.x[:, None].astype(np.float32)
    assert np.allclose(trained_on, (raw / 255 - prep.mean[0]) / prep.std[0], atol=1e-6)
    # mean/std were measured on the training split's model-view pixels
    view = image.to_model_pixels(splits.train.x, prep)
    assert abs(view.mean() - prep.mean[0]) < 1e-4 and abs(view.std() - prep.std[0]) < 1e-4


def test_array_and_bytes_paths_agree_on_other_sizes_and_modes():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    from_bytes = image.preprocess_bytes([encode(rgb)], RGB)
    from_array = image.preprocess_array([rgb], RGB)
    assert from_bytes.shape == (1, 3, 16, 16)
    assert np.array_equal(from_bytes, from_array)
    # greyscale model, RGB input: PIL's luminance conversion on both paths
    assert np.array_equal(image.preprocess_bytes([encode(rgb)], GREY), image.preprocess_array([rgb], GREY))


def test_normalize_and_invert_numbers():
    pixels = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    prep = ImagePreprocessing(image_size=2, channels=1, mean=[0.5], std=[0.25], invert=False)
    out = image.preprocess_array(pixels, prep)
    assert np.allclose(out[0, 0], (np.array([[0, 1], [0.2, 0.4]]) - 0.5) / 0.25)
    inv = image.preprocess_array(pixels, prep.model_copy(update={"invert": True}))
    assert np.allclose(inv[0, 0], (np.array([[1, 0], [0.8, 0.6]]) - 0.5) / 0.25)
    mean, std = image.image_features(image.to_model_pixels(pixels, prep))
    assert np.allclose(mean, [0.4]) and np.allclose(std, np.std([0, 1, 0.2, 0.4]))


def test_transparent_png_becomes_white():
    rgba = np.zeros((10, 10, 4), dtype=np.uint8)  # fully transparent black
    rgba[2:4, 2:4] = [0, 0, 0, 255]  # one opaque black square
    grey = image.decode_to_uint8(encode(rgba, mode="RGBA"), GREY)
    assert grey.shape == (28, 28)
    assert grey[0, 0] == 255 and grey[:12, :12].min() < 50


def test_jpeg_is_decoded():
    rgb = np.full((28, 28, 3), 200, dtype=np.uint8)
    out = image.decode_to_uint8(encode(rgb, "JPEG"), GREY)
    assert out.shape == (28, 28) and abs(int(out.mean()) - 200) <= 2


def _turned(fmt: str, where: str) -> bytes:
    """A 20x10 image (white left half) saved with orientation 6 (shown turned 90 degrees clockwise),
    the tag in EXIF or in XMP."""
    pixels = np.zeros((10, 20), dtype=np.uint8)
    pixels[:, :10] = 255
    img, buf = Image.fromarray(pixels, mode="L"), io.BytesIO()
    if where == "exif":
        exif = Image.Exif()
        exif[0x0112] = 6
        img.save(buf, fmt, exif=exif.tobytes())
    else:
        from PIL import PngImagePlugin

        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", '<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>')
        img.save(buf, fmt, pnginfo=info)
    return buf.getvalue()


@pytest.mark.parametrize("fmt, where", [("JPEG", "exif"), ("PNG", "exif"), ("PNG", "xmp")])
def test_orientation_tags_turn_the_image(fmt, where):
    img = image.decode_image(_turned(fmt, where), GREY)
    assert img.size == (10, 20)  # width x height, turned
    top, bottom = np.asarray(img)[:10].mean(), np.asarray(img)[10:].mean()
    assert top > 200 and bottom < 50  # the white left half is now on top
    plain = image.decode_image(encode(np.zeros((10, 20), dtype=np.uint8)), GREY)
    assert plain.size == (20, 10)
    # the service's path (decode_pixels, resized to 28x28) turns it too: the PNG fast path steps aside
    pixels, sent = image.decode_pixels(_turned(fmt, where), GREY)
    assert sent == 200 and pixels[:12].mean() > 200 and pixels[16:].mean() < 50


def _with_ihdr(png: bytes, width: int, height: int) -> bytes:
    """``png`` with its header claiming another size (CRC made valid again)."""
    body = b"IHDR" + struct.pack(">II", width, height) + png[24:29]
    return png[:12] + body + struct.pack(">I", zlib.crc32(body)) + png[33:]


def _plain_and_other_pngs():
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    return [
        (encode(grey), GREY, True),  # the fast path's case: an 8-bit greyscale PNG at the model's size
        (encode(rng.integers(0, 256, (40, 30), dtype=np.uint8)), GREY, True),  # resized after decoding
        (encode(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)), RGB, True),
        (encode(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)), GREY, False),  # PIL's luminance
        (encode(grey), RGB, False),
        (encode(grey.astype(np.uint16) * 257), GREY, False),  # 16 bits per sample
        (encode(rng.integers(0, 256, (28, 28, 4), dtype=np.uint8), mode="RGBA"), GREY, False),
        (_saved(Image.fromarray(grey).convert("P")), GREY, False),  # palette
    ]


def _saved(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("case", range(len(_plain_and_other_pngs())))
def test_plain_pngs_skip_pil_and_give_its_pixels(case, monkeypatch):
    data, prep, plain = _plain_and_other_pngs()[case]
    img = image.decode_image(data, prep)
    want = image.resize_uint8(img, prep.image_size), img.size[0] * img.size[1]

    def no_pil(*args, **kwargs):
        raise AssertionError("PIL was asked to open a plain PNG")

    monkeypatch.setattr(image.Image, "open", no_pil)
    if plain:
        got = image.decode_pixels(data, prep)
        assert np.array_equal(got[0], want[0]) and got[0].dtype == np.uint8 and got[1] == want[1]
    else:  # anything else still goes through PIL
        with pytest.raises(AssertionError, match="PIL was asked"):
            image.decode_pixels(data, prep)


@pytest.mark.parametrize("where", [60, 1000, -20])
def test_damaged_png_is_refused_not_misread(where):
    """libspng as pyspng sets it up checks no CRC and no zlib checksum: a flipped byte in the pixels
    would decode to wrong pixels; such a file goes to PIL, which refuses it (422)."""
    data = bytearray(encode(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)))
    data[where] ^= 0xFF
    with pytest.raises(InputError, match="corrupt or truncated") as err:
        image.decode_pixels(bytes(data), GREY)
    assert err.value.status == 422 and err.value.field == "image"


def test_fast_path_checks_the_header_size_first(monkeypatch):
    data = encode(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))

    # a header claiming 100k x 100k pixels is refused before anything is decompressed
    monkeypatch.setattr(image.pyspng, "load", lambda *a: pytest.fail("decoded a file over max_pixels"))
    with pytest.raises(InputError, match="100000x100000 = 10000000000 pixels") as err:
        image.decode_pixels(_with_ihdr(data, 100_000, 100_000), GREY)
    assert err.value.status == 413 and err.value.limit == GREY.max_pixels
    with pytest.raises(InputError, match="no pixels") as err:
        image.decode_pixels(_with_ihdr(data, 0, 64), GREY)
    assert err.value.status == 422


@pytest.mark.parametrize(
    "data, status, message",
    [
        (b"", 422, "empty"),
        (b"GIF89a but not really", 415, "not a supported image"),
        (b"hello world", 415, "not a supported image"),
        ("a string", 422, "must be bytes"),
    ],
)
@pytest.mark.parametrize("decode", [image.decode_image, image.decode_pixels])
def test_bad_bytes(data, status, message, decode):
    with pytest.raises(InputError, match=message) as err:
        decode(data, GREY)
    assert err.value.field == "image" and err.value.status == status


@pytest.mark.parametrize("decode", [image.decode_image, image.decode_pixels])
def test_truncated_image_is_422(decode):
    data = encode(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))
    with pytest.raises(InputError, match="corrupt or truncated") as err:
        decode(data[: len(data) // 2], GREY)
    assert err.value.status == 422


@pytest.mark.parametrize("decode", [image.decode_image, image.decode_pixels])
def test_byte_and_pixel_limits_are_413_and_named(decode):
    data = encode(np.zeros((64, 64), dtype=np.uint8))
    small = GREY.model_copy(update={"max_bytes": len(data) - 1})
    with pytest.raises(InputError, match=f"limit is {len(data) - 1} bytes") as err:
        decode(data, small)
    assert (err.value.status, err.value.limit, err.value.field) == (413, len(data) - 1, "image")

    few = GREY.model_copy(update={"max_pixels": 64 * 63})
    with pytest.raises(InputError, match="64x64 = 4096 pixels; the limit is 4032 pixels") as err:
        decode(data, few)
    assert err.value.status == 413 and err.value.limit == 4032
    with pytest.raises(InputError, match="limit is 4032 pixels"):
        image.array_to_uint8(np.zeros((64, 64), dtype=np.uint8), few)


def test_bad_arrays():
    with pytest.raises(InputError, match="uint8"):
        image.array_to_uint8(np.zeros((28, 28), dtype=np.float32), GREY)
    with pytest.raises(InputError, match="HxW, HxWx3 or HxWx4"):
        image.array_to_uint8(np.zeros((28, 28, 2), dtype=np.uint8), GREY)
    with pytest.raises(InputError, match="no pixels"):
        image.array_to_uint8(np.zeros((0, 28), dtype=np.uint8), GREY)
