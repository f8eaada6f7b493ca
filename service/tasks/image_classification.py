"""Image classification: image files or uint8 pixels in, the top-k labels out."""

from __future__ import annotations

from .base import ServiceError, Tensor, batch_of, bytes_items
from .text_classification import RankedLabels


def _size(m):
    return m.preprocessing.image_size


def _channels(m):
    return m.preprocessing.channels


IMAGE = Tensor("image", "UINT8", batch_of(_size, _size, _channels),
               "decoded pixels, N x height x width x channels (another size is resized, like a file)")
IMAGE_BYTES = Tensor("image_bytes", "BYTES", batch_of(), "encoded image files (PNG, JPEG, ...), one per item")


class ImageClassification(RankedLabels):
    task = "image-classification"
    json_endpoint = "/classify_image"
    items_field = "images"
    inputs = (IMAGE, IMAGE_BYTES)
    size_features = {"pixels": "pixels"}

    def items_from_tensors(self, manifest, tensors):
        if len(tensors) != 1:
            raise ServiceError(422, "send exactly one of the inputs 'image' (UINT8 pixels) and 'image_bytes' "
                               "(encoded files)", field="inputs", limit=["image", "image_bytes"])
        if "image_bytes" in tensors:
            return bytes_items(tensors["image_bytes"], "image_bytes"), "image_bytes"
        pixels = tensors["image"]
        if pixels.ndim not in (3, 4):
            raise ServiceError(422, f"input 'image' must have shape [N, H, W] or [N, H, W, C], got "
                               f"{list(pixels.shape)}", field="image", limit=IMAGE.shape(manifest))
        return list(pixels), "image"

    def model_parameters(self, manifest):
        p = manifest.preprocessing
        return {**super().model_parameters(manifest), "max_bytes": str(p.max_bytes), "max_pixels": str(p.max_pixels)}
