"""Image preprocessing shared by training, evaluation and serving. Torch-free (PIL + numpy).

One pipeline, two entry points:

- :func:`decode_pixels` + :func:`preprocess_bytes` for what clients send (PNG/JPEG/... bytes),
- :func:`preprocess_array` for images already decoded into uint8 arrays (IDX files, folders).

Both end in :func:`to_model_pixels` and :func:`normalize`, so a training tensor and the
tensor the service builds from the same image saved losslessly are identical.

Steps: decode -> flatten alpha onto white -> convert to the manifest's channels -> resize to
``image_size`` (bilinear) -> invert if configured -> scale to [0, 1] -> (x - mean) / std,
laid out as float32 NCHW.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from collections.abc import Sequence

import numpy as np
import pyspng
from PIL import Image, ImageOps, UnidentifiedImageError

from .manifest import ImagePreprocessing
from .runtimes.base import InputError

FIELD = "image"
_MODES = {1: "L", 3: "RGB"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG = ("PNG",)
# where PIL 13's Image.getexif finds an orientation (besides TIFF tags)
_ORIENTATION_SOURCES = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")
# PNG colour type (8 bits per sample) already in a model's mode: 0 greyscale, 2 truecolour
_PLAIN_PNG_COLOUR = {1: (0, "L"), 3: (2, "RGB")}
# the chunks an orientation can come in (eXIf; EXIF or XMP in a text chunk): such PNGs take PIL's path
_ORIENTATION_CHUNKS = frozenset((b"eXIf", b"tEXt", b"zTXt", b"iTXt"))


def check_pixels(width: int, height: int, prep: ImagePreprocessing) -> None:
    """Refuse an image with no pixels (422) or more than ``prep.max_pixels`` (413)."""
    if width * height == 0:
        raise InputError(f"image has no pixels ({width}x{height})", field=FIELD, status=422)
    if width * height > prep.max_pixels:
        raise InputError(
            f"image is {width}x{height} = {width * height} pixels; the limit is {prep.max_pixels} pixels",
            field=FIELD,
            limit=prep.max_pixels,
            status=413,
        )


def _pil_mode(channels: int) -> str:
    if channels not in _MODES:
        raise ValueError(f"channels must be 1 or 3, not {channels}")
    return _MODES[channels]


def decode_pixels(data: bytes, prep: ImagePreprocessing) -> tuple[np.ndarray, int]:
    """Client bytes -> (uint8 HxW or HxWxC in the manifest's mode at ``image_size``, pixels as sent).

    An 8-bit PNG already in the model's mode with no chunk that could turn it (what the samples,
    the benchmarks and most programs that write PNGs send) is decoded by libspng
    (``pyspng``): ~9 us for a 28x28 PNG against ~35 us through PIL, whose Python-level plugin
    machinery and GIL releases cost the service's event loop ~100 us a request in context
    (measured in benchmarks/RESULTS.md). Every other file goes through :func:`decode_image`;
    both give the same pixels and the same 4xx errors.
    """
    data = _checked_bytes(data, prep)
    plain = _plain_png(data, prep)
    if plain is None:
        img = _pil_decode(data, prep)
        return resize_uint8(img, prep.image_size), img.size[0] * img.size[1]
    height, width = plain.shape[:2]
    return resize_array(plain, prep.image_size), width * height


def _checked_bytes(data: bytes, prep: ImagePreprocessing) -> bytes:
    """``data`` as bytes, refused when it is not bytes (422), empty (422) or over ``max_bytes`` (413)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InputError(f"image must be bytes, got {type(data).__name__}", field=FIELD, status=422)
    size = len(data)
    if size == 0:
        raise InputError("image is empty (0 bytes)", field=FIELD, status=422)
    if size > prep.max_bytes:
        raise InputError(
            f"image is {size} bytes; the limit is {prep.max_bytes} bytes", field=FIELD, limit=prep.max_bytes, status=413
        )
    return data if type(data) is bytes else bytes(data)


def _plain_png(data: bytes, prep: ImagePreprocessing) -> np.ndarray | None:
    """A plain PNG's pixels through libspng, or None when the file is for PIL: another format, bit
    depth or colour type, a chunk that may hold an orientation, or a chunk whose CRC does not hold
    (pyspng tells libspng to ignore CRCs, and with them zlib's checksum, so a damaged file would
    decode to wrong pixels; PIL refuses it as before). The size in the header (the format puts
    IHDR first) is checked against ``max_pixels`` before anything is decompressed."""
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR" or len(data) < 33:
        return None
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    want, mode = _PLAIN_PNG_COLOUR[prep.channels]
    if depth != 8 or colour != want:
        return None
    types = _intact_chunk_types(data)
    if types is None or not _ORIENTATION_CHUNKS.isdisjoint(types):
        return None
    check_pixels(width, height, prep)
    try:
        return pyspng.load(data, mode)
    except RuntimeError as e:  # libspng's errors: a malformed stream
        raise InputError(f"image data is corrupt or truncated: {e}", field=FIELD, status=422) from None


def _intact_chunk_types(data: bytes) -> list[bytes] | None:
    """The types of a PNG's chunks up to IEND, or None if one is cut short, has a wrong CRC, or IEND
    never comes."""
    view, pos, end, types = memoryview(data), 8, len(data), []
    while pos + 12 <= end:
        (length,) = struct.unpack_from(">I", data, pos)
        crc_at = pos + 8 + length
        if crc_at + 4 > end or zlib.crc32(view[pos + 4 : crc_at]) != struct.unpack_from(">I", data, crc_at)[0]:
            return None
        kind = data[pos + 4 : pos + 8]
        if kind == b"IEND":
            return types
        types.append(kind)
        pos = crc_at + 4
    return None


def decode_image(data: bytes, prep: ImagePreprocessing) -> Image.Image:
    """Decode client bytes into a PIL image in the manifest's channel mode (not yet resized).

    Raises InputError(field="image"): 413 over ``max_bytes`` or ``max_pixels``, 415 when the
    bytes are not an image PIL can read, 422 when the image is empty or truncated.
    """
    return _pil_decode(_checked_bytes(data, prep), prep)


def _pil_decode(data: bytes, prep: ImagePreprocessing) -> Image.Image:
    """:func:`decode_image` for bytes already through :func:`_checked_bytes`."""
    try:
        with warnings.catch_warnings():
            # our own max_pixels check below replaces PIL's DecompressionBomb warning/error
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # a PNG goes straight to PIL's PNG plugin instead of every plugin's test in turn (1.5 us of 11)
            img = Image.open(io.BytesIO(data), formats=_PNG if data[:8] == PNG_SIGNATURE else None)
    except (UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise InputError(f"not a supported image file ({e.__class__.__name__})", field=FIELD, status=415) from None
    width, height = img.size
    check_pixels(width, height, prep)
    try:
        img.load()
        if _may_be_turned(img):
            ImageOps.exif_transpose(img, in_place=True)  # in place: no copy of an image that needs no turn
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise InputError(f"image data is corrupt or truncated: {e}", field=FIELD, status=422) from None
    return to_channels(img, prep.channels)


def _may_be_turned(img: Image.Image) -> bool:
    """Whether ``img`` holds anything PIL reads an orientation from (EXIF, XMP, TIFF tags; read once
    loaded, as a PNG's trailing chunks are). ``exif_transpose`` on a plain 28x28 PNG costs ~7 us, a
    quarter of decoding it, and the service decodes on its event loop."""
    return hasattr(img, "tag_v2") or any(key in img.info for key in _ORIENTATION_SOURCES)


def to_channels(img: Image.Image, channels: int) -> Image.Image:
    """Convert to greyscale ("L") or RGB; transparent areas become white, like a page."""
    mode = _pil_mode(channels)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != mode:
        img = img.convert(mode)
    return img


def resize_uint8(img: Image.Image, image_size: int) -> np.ndarray:
    """Resize to ``image_size`` squared (bilinear; no-op at that size) -> uint8 HxW or HxWxC."""
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def resize_array(pixels: np.ndarray, image_size: int) -> np.ndarray:
    """:func:`resize_uint8` for a uint8 HxW (L) or HxWx3 (RGB) array; the array itself at that size."""
    if pixels.shape[:2] == (image_size, image_size):
        return pixels
    return resize_uint8(Image.fromarray(pixels), image_size)


def to_model_pixels(images: np.ndarray, prep: ImagePreprocessing) -> np.ndarray:
    """uint8 NHW / NHWC at ``image_size`` -> float32 NCHW in [0, 1], inverted if configured.

    This is the image as the model sees it before mean/std; the drift features
    (mean intensity, contrast) are measured here.
    """
    x = np.asarray(images)
    if x.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {x.dtype}")
    if x.ndim == 3:
        x = x[:, None, :, :]
    elif x.ndim == 4:
        x = x.transpose(0, 3, 1, 2)
    else:
        raise ValueError(f"expected NHW or NHWC pixels, got shape {x.shape}")
    expected = (prep.channels, prep.image_size, prep.image_size)
    if x.shape[1:] != expected:
        raise ValueError(f"pixels have shape {x.shape[1:]} (CHW), preprocessing expects {expected}")
    pixels = x.astype(np.float32) / np.float32(255.0)
    if prep.invert:
        pixels = np.float32(1.0) - pixels
    return pixels


def normalize(pixels: np.ndarray, prep: ImagePreprocessing) -> np.ndarray:
    """(pixels - mean) / std per channel: float32 NCHW in [0, 1] -> model input."""
    mean = np.asarray(prep.mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(prep.std, dtype=np.float32).reshape(1, -1, 1, 1)
    if mean.shape[1] != pixels.shape[1] or std.shape[1] != pixels.shape[1]:
        raise ValueError(f"mean/std have {mean.shape[1]}/{std.shape[1]} values for {pixels.shape[1]} channels")
    return ((pixels - mean) / std).astype(np.float32, copy=False)


def image_features(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image mean intensity and contrast (std) of model-view pixels in [0, 1]."""
    flat = pixels.reshape(pixels.shape[0], -1)
    return flat.mean(axis=1), flat.std(axis=1)


def decode_to_uint8(data: bytes, prep: ImagePreprocessing) -> np.ndarray:
    """Client bytes -> uint8 HxW (or HxWxC) at ``image_size``: the stored form of an image."""
    return decode_pixels(data, prep)[0]


def array_to_uint8(image: np.ndarray, prep: ImagePreprocessing) -> np.ndarray:
    """One decoded uint8 image (HxW, HxWx1, HxWx3 or HxWx4) -> uint8 at ``image_size``.

    Goes through PIL exactly like decoded bytes do, so the two paths agree.
    """
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise InputError(f"image array must be uint8, got {a.dtype}", field=FIELD, status=422)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise InputError(f"image array must be HxW, HxWx3 or HxWx4, got shape {a.shape}", field=FIELD, status=422)
    height, width = a.shape[:2]
    check_pixels(width, height, prep)
    mode = "L" if a.ndim == 2 else ("RGB" if a.shape[2] == 3 else "RGBA")
    return resize_uint8(to_channels(Image.fromarray(a, mode=mode), prep.channels), prep.image_size)


def preprocess_array(images: np.ndarray | Sequence[np.ndarray], prep: ImagePreprocessing) -> np.ndarray:
    """Decoded uint8 images -> float32 NCHW model input.

    A stacked array already at ``image_size`` in the right channel layout (what the
    dataset loaders store) skips PIL; anything else goes through :func:`array_to_uint8`.
    """
    if isinstance(images, np.ndarray) and images.dtype == np.uint8 and _is_stored_layout(images, prep):
        stacked = images
    else:
        stacked = np.stack([array_to_uint8(a, prep) for a in images])
    return normalize(to_model_pixels(stacked, prep), prep)


def preprocess_bytes(items: Sequence[bytes], prep: ImagePreprocessing) -> np.ndarray:
    """Client image bytes -> float32 NCHW model input (same steps as :func:`preprocess_array`)."""
    return normalize(to_model_pixels(np.stack([decode_to_uint8(b, prep) for b in items]), prep), prep)


def encode_png(image: np.ndarray) -> bytes:
    """A uint8 HxW / HxWx3 array as PNG bytes (lossless): for samples, tests and demos."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _is_stored_layout(images: np.ndarray, prep: ImagePreprocessing) -> bool:
    s = prep.image_size
    if prep.channels == 1:
        return images.ndim == 3 and images.shape[1:] == (s, s)
    return images.ndim == 4 and images.shape[1:] == (s, s, prep.channels)
