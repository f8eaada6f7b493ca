"""Image classification runtime: image bytes (or a decoded array) -> ranked labels. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import image
from ..onnx_session import open_session
from ..scores import ranked, softmax
from .base import InputError, Runtime

DEFAULT_TOP_K = 5


@dataclass(frozen=True)
class ImageInput:
    """A validated image: uint8 pixels at the model's size, and the pixel count it arrived with."""

    pixels: np.ndarray
    source_pixels: int


class ImageClassifierRuntime(Runtime):
    """Serves one ``image-classification`` model version (fp32 or int8 graph).

    Each result is ``{"labels": [{"label", "score"}, ...], "scores": {label: probability},
    "features": {...}}``; ``features["pixels"]`` is the image's size as sent (width x height).
    """

    task = "image-classification"

    def load(self) -> None:
        prep = self.manifest.preprocessing
        if prep.kind != "image":
            raise ValueError(f"{self.manifest.name}: image runtime needs image preprocessing, got {prep.kind}")
        self.prep = prep
        self.graph_spec = self.manifest.graph("model", self.variant)
        path = self.version_dir / self.graph_spec.path
        if not path.is_file():
            raise FileNotFoundError(f"{self.manifest.name}/{self.manifest.version}: graph file missing: {path}")
        self.session, self.provider = open_session(path, self.settings)
        self.input_name = self.graph_spec.inputs[0].name
        self.output_name = self.graph_spec.outputs[0].name
        self.labels = list(self.manifest.labels)

    def validate(self, item: Any) -> ImageInput:
        """Image bytes or a decoded uint8 array -> uint8 pixels at the model's size.

        Raises InputError(field="image"): 413 too many bytes/pixels, 415 not an image,
        422 empty, corrupt or wrong array shape/dtype.
        """
        if isinstance(item, ImageInput):
            return item
        if isinstance(item, (bytes, bytearray, memoryview)):
            return ImageInput(*image.decode_pixels(item, self.prep))
        if isinstance(item, np.ndarray):
            return ImageInput(image.array_to_uint8(item, self.prep), int(item.shape[0] * item.shape[1]))
        raise InputError(
            f"image must be image file bytes or a uint8 array, got {type(item).__name__}", field="image", status=422
        )

    def preprocess(self, items: list[Any], top_k: int | None = None, **options: Any):
        inputs = [self.validate(it) for it in items]
        pixels = image.to_model_pixels(np.stack([i.pixels for i in inputs]), self.prep)
        mean_intensity, contrast = image.image_features(pixels)
        n = len(self.labels)
        k = min(DEFAULT_TOP_K, n) if top_k is None else max(1, min(int(top_k), n))
        sizes = [float(i.source_pixels) for i in inputs]
        return image.normalize(pixels, self.prep), k, sizes, mean_intensity.tolist(), contrast.tolist()

    def infer(self, batch) -> np.ndarray:
        (logits,) = self.session.run([self.output_name], {self.input_name: batch[0]})
        return logits

    def postprocess(self, batch, logits: np.ndarray) -> list[dict]:
        _, k, sizes, means, contrasts = batch
        probs = softmax(logits.astype(np.float64))
        ranks = ranked(probs, self.labels, k)
        return [
            {
                "labels": labels,
                "scores": dict(zip(self.labels, values)),
                "features": {
                    "mean_intensity": mean,
                    "contrast": spread,
                    "predicted_class": labels[0]["label"],
                    "top_confidence": labels[0]["score"],
                    "pixels": size,
                },
            }
            for labels, values, mean, spread, size in zip(ranks, probs.tolist(), means, contrasts, sizes)
        ]

    def warmup(self) -> None:
        s = self.prep.image_size
        shape = (s, s) if self.prep.channels == 1 else (s, s, self.prep.channels)
        self.predict([np.zeros(shape, dtype=np.uint8)])
