"""Runtime for text classifiers (softmax, single label) and multi-label tagging (sigmoid). Torch-free."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..manifest import TextPreprocessing
from ..onnx_session import open_session
from ..scores import above_threshold, ranked, sigmoid, softmax, thresholds_array
from ..text import EncodedText, TextEncoder
from .base import InputError, Runtime


class TextClassifierRuntime(Runtime):
    """``text-classification`` and ``multi-label-classification`` over one ``model`` graph.

    Items are strings (or ``{"text": ...}``). Each result is
    ``{"labels": [{"label", "score"}, ...], "scores": {label: probability}, "features": {...}}``.
    """

    task = "text-classification"

    def load(self) -> None:
        pre = self.manifest.preprocessing
        if not isinstance(pre, TextPreprocessing):
            raise ValueError(f"{self.manifest.name}: expected text preprocessing, got {pre.kind}")
        self.pre = pre
        self.encoder = TextEncoder.from_file(
            self.version_dir / pre.tokenizer_file, pre.max_length, pre.pad_token_id, pre.unk_token_id
        )
        graph = self.manifest.graph("model", self.variant)
        self.session, self.provider = open_session(self.version_dir / graph.path, self.settings)
        self.input_names = [i.name for i in graph.inputs]
        self.output_name = graph.outputs[0].name
        self.labels = list(self.manifest.labels)
        self.multi_label = self.manifest.task == "multi-label-classification"
        self.thresholds = thresholds_array(self.manifest.postprocessing.thresholds, len(self.labels))

    def _check(self, item: Any) -> str:
        """The item's text, or InputError naming the field and the limit."""
        if isinstance(item, dict):
            item = item.get("text")
        if not isinstance(item, str):
            raise InputError(f"text must be a string, got {type(item).__name__}", field="text", limit="string")
        if not item.strip():
            raise InputError("text is empty", field="text", limit="non-empty")
        limit = self.pre.max_text_chars
        if len(item) > limit:
            raise InputError(f"text has {len(item)} characters; the limit is {limit}", field="text", limit=limit)
        return item

    def validate(self, item: Any) -> str | EncodedText:
        """The checked text; tokenization waits for the batch (one ``encode_batch`` call is
        cheaper per item, and in the service it runs in the model's thread, not the event loop)."""
        if isinstance(item, EncodedText):
            return item
        return self._check(item)

    def _encode(self, items: list[Any]) -> list[EncodedText]:
        """Validated items pass through; raw ones are checked and encoded in one batch."""
        texts = [self._check(i) for i in items if not isinstance(i, EncodedText)]
        encoded = iter(self.encoder.encode_batch(texts) if texts else [])
        return [i if isinstance(i, EncodedText) else next(encoded) for i in items]

    def logits(self, encoded: list[EncodedText]) -> np.ndarray:
        """Raw model outputs for a batch of encoded texts."""
        ids, mask = self.encoder.pad(encoded)
        feeds = {"input_ids": ids, "attention_mask": mask}
        return self.session.run([self.output_name], {n: feeds[n] for n in self.input_names})[0]

    def preprocess(self, items: list[Any], *, top_k: int | None = None, **options: Any) -> tuple[list[EncodedText], int]:
        n = len(self.labels)
        return self._encode(items), n if top_k is None else max(1, min(int(top_k), n))

    def infer(self, batch: tuple[list[EncodedText], int]) -> np.ndarray:
        return self.logits(batch[0])

    def postprocess(self, batch: tuple[list[EncodedText], int], logits: np.ndarray) -> list[dict]:
        """Ranked labels (the top k; multi-label: every label at or above its threshold), every
        label's probability under ``scores``, and the drift features."""
        encoded, k = batch
        probs = sigmoid(logits) if self.multi_label else softmax(logits)
        ranks = ranked(probs, self.labels, None if self.multi_label else k)
        out = []
        for enc, row, values, labels in zip(encoded, probs, probs.tolist(), ranks):
            features = {
                "token_count": enc.token_count,
                "unknown_token_rate": enc.unknown_rate,
                "predicted_class": labels[0]["label"],
                "top_confidence": labels[0]["score"],
            }
            scores = dict(zip(self.labels, values))
            if self.multi_label:
                chosen = above_threshold(row, self.labels, self.thresholds)
                features["labels_per_item"] = len(chosen)
                out.append({"labels": chosen, "scores": scores, "features": features})
            else:
                out.append({"labels": labels, "scores": scores, "features": features})
        return out

    def warmup(self) -> None:
        self.predict(["warm up"])
