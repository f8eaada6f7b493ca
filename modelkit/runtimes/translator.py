"""Translation runtime: tokenizer + ONNX encoder/decoder graphs + torch-free greedy/beam search."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..manifest import TranslationPreprocessing
from ..onnx_session import open_session
from ..seq2seq import DecoderSpec, Hypothesis, Seq2SeqDecoder, pad_batch
from .base import InputError, Runtime


class TranslatorRuntime(Runtime):
    """Serves one translation model version (task ``translation``).

    Items are source strings (or ``{"text": str}``). ``predict`` options ``num_beams``,
    ``max_new_tokens`` and ``length_penalty`` default to the manifest's generation block and
    are checked against its limits.
    """

    task = "translation"

    def load(self) -> None:
        from tokenizers import Tokenizer

        pre = self.manifest.preprocessing
        if not isinstance(pre, TranslationPreprocessing):
            raise ValueError(f"{self.manifest.name}: translation runtime needs translation preprocessing")
        self.pre = pre
        self.gen = self.manifest.generation
        self.tokenizer = Tokenizer.from_file(str(self.version_dir / pre.tokenizer_file))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        sessions = {}
        for role in ("encoder", "decoder", "decoder_with_past"):
            graph = self.manifest.graph(role, self.variant)
            sessions[role], self.provider = open_session(self.version_dir / graph.path, self.settings)
        suppress = sorted({pre.pad_token_id, pre.bos_token_id, pre.decoder_start_token_id} - {pre.eos_token_id})
        self.spec = DecoderSpec(
            num_layers=self.gen.num_decoder_layers,
            num_heads=self.gen.num_heads,
            head_dim=self.gen.head_dim,
            bos_token_id=pre.decoder_start_token_id,
            eos_token_id=pre.eos_token_id,
            pad_token_id=pre.pad_token_id,
            suppress_token_ids=suppress,
        )
        self.decoder = Seq2SeqDecoder(sessions["encoder"], sessions["decoder"], sessions["decoder_with_past"], self.spec)

    # ------------------------------------------------------------------ input checks

    def validate(self, item: Any) -> list[int]:
        """Source text -> token ids (EOS appended); InputError naming the field and limit if bad."""
        text = item.get("text") if isinstance(item, dict) else item
        if not isinstance(text, str):
            raise InputError(f"text must be a string, got {type(text).__name__}", field="text", limit="string")
        if not text.strip():
            raise InputError("text is empty", field="text", limit="non-empty")
        if len(text) > self.pre.max_text_chars:
            raise InputError(
                f"text has {len(text)} characters; the limit is {self.pre.max_text_chars}",
                field="text", limit=self.pre.max_text_chars,
            )
        ids = self.tokenizer.encode(text).ids
        if len(ids) > self.pre.max_source_length:
            raise InputError(
                f"text has {len(ids)} tokens; the limit is {self.pre.max_source_length}",
                field="text", limit=self.pre.max_source_length,
            )
        return ids

    def generation_options(
        self, num_beams: int | None = None, max_new_tokens: int | None = None, length_penalty: float | None = None
    ) -> tuple[int, int, float]:
        """Options with manifest defaults filled in; InputError when outside the manifest's limits."""
        gen = self.gen
        num_beams = gen.num_beams if num_beams is None else num_beams
        max_new_tokens = gen.max_new_tokens if max_new_tokens is None else max_new_tokens
        length_penalty = gen.length_penalty if length_penalty is None else length_penalty
        if isinstance(num_beams, bool) or not isinstance(num_beams, int) or not 1 <= num_beams <= gen.max_num_beams:
            raise InputError(f"num_beams must be an integer in 1..{gen.max_num_beams}", field="num_beams",
                             limit=gen.max_num_beams)
        if (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int)
                or not 1 <= max_new_tokens <= gen.max_max_new_tokens):
            raise InputError(f"max_new_tokens must be an integer in 1..{gen.max_max_new_tokens}",
                             field="max_new_tokens", limit=gen.max_max_new_tokens)
        if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)) or not (
            -2.0 <= float(length_penalty) <= 2.0
        ):
            raise InputError("length_penalty must be a number in -2..2", field="length_penalty", limit=[-2.0, 2.0])
        return num_beams, max_new_tokens, float(length_penalty)

    # ------------------------------------------------------------------ decoding

    def generate_ids(
        self, sources: list[list[int]], *, num_beams: int, max_new_tokens: int, length_penalty: float = 1.0,
        use_cache: bool = True,
    ) -> list[Hypothesis]:
        """Decode already-validated source ids (one padded batch); generated ids per item."""
        ids, mask = pad_batch(sources, self.pre.pad_token_id)
        return self.decoder.beam_search(
            ids, mask, num_beams=num_beams, max_new_tokens=max_new_tokens, length_penalty=length_penalty,
            use_cache=use_cache,
        )

    def detokenize(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def predict(self, items: list[Any], **options: Any) -> list[dict]:
        """Translate a batch: ``{"translation": str, "features": {...}}`` per item, in order."""
        unknown = set(options) - {"num_beams", "max_new_tokens", "length_penalty"}
        if unknown:
            name = sorted(unknown)[0]
            raise InputError(f"unknown option {name!r}", field=name, limit="num_beams|max_new_tokens|length_penalty")
        num_beams, max_new_tokens, length_penalty = self.generation_options(**options)
        if not items:
            self.last_timings = {"preprocess": 0.0, "inference": 0.0, "postprocess": 0.0}
            return []
        t0 = time.perf_counter()
        sources = [it if isinstance(it, list) else self.validate(it) for it in items]
        t1 = time.perf_counter()
        hyps = self.generate_ids(sources, num_beams=num_beams, max_new_tokens=max_new_tokens,
                                 length_penalty=length_penalty)
        t2 = time.perf_counter()
        unk = self.pre.unk_token_id
        results = []
        for src, hyp in zip(sources, hyps):
            n_src = max(len(src) - 1, 1)  # without the appended EOS
            n_out = len(hyp.tokens) - (1 if hyp.finished else 0)
            results.append({
                "translation": self.detokenize(hyp.tokens),
                "features": {
                    "source_tokens": float(len(src) - 1),
                    "unknown_rate": float(sum(t == unk for t in src) / n_src) if unk is not None else 0.0,
                    "length_ratio": float(n_out / n_src),
                    "generated_tokens": float(n_out),
                    "mean_logprob": float(hyp.mean_logprob),
                },
            })
        self.last_timings = {"preprocess": t1 - t0, "inference": t2 - t1, "postprocess": time.perf_counter() - t2}
        return results

    def warmup(self) -> None:
        self.predict(["warm up"], num_beams=1, max_new_tokens=2)


def sort_by_length(sources: list[list[int]]) -> np.ndarray:
    """Order that groups similar source lengths (less padding when batching)."""
    return np.argsort([len(s) for s in sources], kind="stable")
