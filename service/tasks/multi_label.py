"""Multi-label text classification (sigmoid): texts in, every label at or above its threshold out."""

from __future__ import annotations

import json

from .base import Option, TaskSpec, Tensor, batch_of, n_labels, score_values, text_items, text_values
from .text_classification import TEXT

TOP_K = Option("top_k", "at most this many of the chosen labels, best first (default: all of them)",
               default=lambda m: None, maximum=n_labels)
LABELS = Tensor("labels", "BYTES", batch_of(),
                "the chosen labels per item (at or above their thresholds, best first) as a JSON array")
SCORES = Tensor("scores", "FP32", batch_of(n_labels), "every label's score per item, in the model's label order")


class MultiLabelClassification(TaskSpec):
    task = "multi-label-classification"
    json_endpoint = "/classify"
    items_field = "texts"
    options = (TOP_K,)
    inputs = (TEXT,)
    outputs = (LABELS, SCORES)
    size_features = {"token_count": "tokens"}

    def runtime_options(self, manifest, options):
        return {}

    def json_result(self, result, options):
        return {"labels": result["labels"][: options["top_k"]]}

    def items_from_tensors(self, manifest, tensors):
        return text_items(tensors["text"], "text"), "text"

    def output(self, name, results, manifest):
        if name == "labels":
            return text_values([json.dumps([lab["label"] for lab in r["labels"]]) for r in results])
        return score_values(results, manifest)

    def predicted_labels(self, result):
        return [lab["label"] for lab in result["labels"]]

    def agrees(self, a, b):  # the same label set
        return {lab["label"] for lab in a["labels"]} == {lab["label"] for lab in b["labels"]}

    def model_parameters(self, manifest):
        return {**super().model_parameters(manifest), "thresholds": json.dumps(manifest.postprocessing.thresholds)}
