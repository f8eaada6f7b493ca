"""Image classification runtime: image bytes (or a decoded array) -> top-k labels. Torch-free."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .. import image
from ..onnx_session import open_session
from ..scores import ranked, softmax
from .base import InputError, Runtime

DEFAULT_TOP_K = 5


class ImageClassifierRuntime(Runtime):
    """Serves one ``image-classification`` model version (fp32 or int8 graph)."""

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

    def validate(self, item: Any) -> np.ndarray:
        """Image bytes or a decoded uint8 array -> uint8 pixels at the model's size.

        Raises InputError(field="image"): 413 too many bytes/pixels, 415 not an image,
        422 empty, corrupt or wrong array shape/dtype.
        """
        if isinstance(item, (bytes, bytearray, memoryview)):
            return image.decode_to_uint8(item, self.prep)
        if isinstance(item, np.ndarray):
            return image.array_to_uint8(item, self.prep)
        raise InputError(
            f"image must be image file bytes or a uint8 array, got {type(item).__name__}", field="image", status=422
        )

    def predict(self, items: list[np.ndarray], top_k: int | None = None, **options: Any) -> list[dict]:
        """Top-k labels with softmax scores, plus drift features, per validated item."""
        if not items:
            self.last_timings = {"preprocess": 0.0, "inference": 0.0, "postprocess": 0.0}
            return []
        k = self._top_k(top_k)
        t0 = time.perf_counter()
        pixels = image.to_model_pixels(np.stack(items), self.prep)
        mean_intensity, contrast = image.image_features(pixels)
        x = image.normalize(pixels, self.prep)
        t1 = time.perf_counter()
        (logits,) = self.session.run([self.output_name], {self.input_name: x})
        t2 = time.perf_counter()
        probs = softmax(logits.astype(np.float64))
        ranks = ranked(probs, self.labels, k)
        results = [
            {
                "labels": labels,
                "features": {
                    "mean_intensity": mean,
                    "contrast": spread,
                    "predicted_class": labels[0]["label"],
                    "top_confidence": labels[0]["score"],
                },
            }
            for labels, mean, spread in zip(ranks, mean_intensity.tolist(), contrast.tolist())
        ]
        t3 = time.perf_counter()
        self.last_timings = {"preprocess": t1 - t0, "inference": t2 - t1, "postprocess": t3 - t2}
        return results

    def warmup(self) -> None:
        s = self.prep.image_size
        shape = (s, s) if self.prep.channels == 1 else (s, s, self.prep.channels)
        self.predict([np.zeros(shape, dtype=np.uint8)])

    def _top_k(self, top_k: int | None) -> int:
        if top_k is None:
            return min(DEFAULT_TOP_K, len(self.labels))
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= len(self.labels):
            raise InputError(
                f"top_k must be an integer from 1 to {len(self.labels)}, got {top_k!r}",
                field="top_k",
                limit=len(self.labels),
                status=422,
            )
        return top_k
