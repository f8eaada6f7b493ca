"""Translation: source texts in, translations out; beam width and length as options."""

from __future__ import annotations

from .base import Option, TaskSpec, Tensor, batch_of, text_items, text_values
from .text_classification import TEXT

NUM_BEAMS = Option("num_beams", "beam width (default from the model's manifest, at most its max_num_beams)",
                   default=lambda m: m.generation.num_beams, maximum=lambda m: m.generation.max_num_beams)
MAX_NEW_TOKENS = Option("max_new_tokens", "generated tokens per text at most (default from the manifest, at most "
                        "its max_max_new_tokens)", default=lambda m: m.generation.max_new_tokens,
                        maximum=lambda m: m.generation.max_max_new_tokens)
TRANSLATION = Tensor("translation", "BYTES", batch_of(), "the translation of each text")


class Translation(TaskSpec):
    task = "translation"
    json_endpoint = "/translate"
    items_field = "texts"
    options = (NUM_BEAMS, MAX_NEW_TOKENS)
    inputs = (TEXT,)
    outputs = (TRANSLATION,)
    size_features = {"source_tokens": "tokens", "generated_tokens": "generated_tokens"}

    def json_result(self, result, options):
        return {"translation": result["translation"]}

    def items_from_tensors(self, manifest, tensors):
        return text_items(tensors["text"], "text"), "text"

    def output(self, name, results, manifest):
        return text_values([r["translation"] for r in results])

    def agrees(self, a, b):  # the same translation
        return a["translation"] == b["translation"]

    def model_parameters(self, manifest):
        p = manifest.preprocessing
        return {**super().model_parameters(manifest), "source_lang": p.source_lang, "target_lang": p.target_lang}
