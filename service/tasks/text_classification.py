"""Single-label text classification (softmax): texts in, the top-k labels out."""

from __future__ import annotations

import numpy as np

from .base import Option, TaskSpec, Tensor, batch_of, n_labels, score_values, text_items, text_values

TOP_K = Option("top_k", "labels per item, best first (default 1, at most the number of labels)",
               default=lambda m: 1, maximum=n_labels)
TEXT = Tensor("text", "BYTES", batch_of(), "UTF-8 texts, one per item")
LABEL = Tensor("label", "BYTES", batch_of(), "the most probable label per item")
PROBABILITIES = Tensor("probabilities", "FP32", batch_of(n_labels),
                       "every label's probability per item, in the model's label order")


class RankedLabels(TaskSpec):
    """Shared by the single-label classifiers (text and image): ranked labels and probabilities."""

    options = (TOP_K,)
    outputs = (LABEL, PROBABILITIES)

    def runtime_options(self, manifest, options):
        # every request asks for the whole ranking, so requests with any top_k share batches
        return {"top_k": len(manifest.labels)}

    def json_result(self, result, options):
        return {"labels": result["labels"][: options["top_k"]]}

    def output(self, name, results, manifest):
        if name == "label":
            return text_values([r["labels"][0]["label"] for r in results])
        return score_values(results, manifest)

    def predicted_labels(self, result):
        return [result["labels"][0]["label"]]

    def agrees(self, a, b):  # the same top label
        return a["labels"][0]["label"] == b["labels"][0]["label"]


class TextClassification(RankedLabels):
    task = "text-classification"
    json_endpoint = "/classify"
    items_field = "texts"
    inputs = (TEXT,)
    size_features = {"token_count": "tokens"}

    def items_from_tensors(self, manifest, tensors: dict[str, np.ndarray]):
        return text_items(tensors["text"], "text"), "text"
