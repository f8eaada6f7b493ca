"""Translation runtime: tokenizer + ONNX encoder/decoder graphs + torch-free greedy/beam search."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..manifest import TranslationPreprocessing
from ..onnx_session import open_session
from ..continuous import ContinuousDecoder
from ..seq2seq import DecoderSpec, Hypothesis, Seq2SeqDecoder, pad_batch
from .base import InputError, Runtime


class TranslatorRuntime(Runtime):
    """Serves one translation model version (task ``translation``).

    Items are source strings (or ``{"text": str}``). ``predict`` options ``num_beams``,
    ``max_new_tokens`` and ``length_penalty`` default to the manifest's generation block.
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
        # versions exported before continuous batching (and imported ones) have no decoder_step graph, and
        # those exported before encoder_kv admit new sequences with a decoder call of their own
        self.step_session = self._optional_session("decoder_step")
        self.encoder_kv_session = self._optional_session("encoder_kv") if self.step_session is not None else None
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

    def _optional_session(self, role: str):
        try:
            graph = self.manifest.graph(role, self.variant)
        except KeyError:
            return None
        session, _ = open_session(self.version_dir / graph.path, self.settings)
        return session

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
        """Options with the manifest's defaults filled in (their bounds are the service's task spec's)."""
        gen = self.gen
        return (
            gen.num_beams if num_beams is None else int(num_beams),
            gen.max_new_tokens if max_new_tokens is None else int(max_new_tokens),
            gen.length_penalty if length_penalty is None else float(length_penalty),
        )

    # ------------------------------------------------------------------ decoding

    @property
    def supports_continuous(self) -> bool:
        """Whether this version has the ``decoder_step`` graph continuous batching needs."""
        return self.step_session is not None

    def continuous_decoder(self, max_rows: int = 64, *, use_encoder_kv: bool = True) -> ContinuousDecoder:
        """A running batch over this version's sessions (``modelkit.continuous``); one per user thread.
        ``use_encoder_kv=False`` admits as versions exported before that graph do (benchmarks compare the two)."""
        if self.step_session is None:
            raise ValueError(f"{self.manifest.name}/{self.manifest.version} has no decoder_step graph")
        return ContinuousDecoder(self.decoder.encoder, self.decoder.decoder, self.step_session, self.spec,
                                 max_rows=max_rows, encoder_kv=self.encoder_kv_session if use_encoder_kv else None)

    def generate_continuous(self, sources: list[list[int]], *, num_beams: int, max_new_tokens: int,
                            length_penalty: float = 1.0) -> list[Hypothesis]:
        """Decode already-validated source ids as one static batch through the continuous decoder."""
        return self.continuous_decoder(max(len(sources) * num_beams, 1)).decode(
            sources, num_beams=num_beams, max_new_tokens=max_new_tokens, length_penalty=length_penalty)

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

    def preprocess(self, items: list[Any], **options: Any):
        sources = [it if isinstance(it, list) else self.validate(it) for it in items]
        return sources, self.generation_options(**options)

    def infer(self, batch) -> list[Hypothesis]:
        sources, (num_beams, max_new_tokens, length_penalty) = batch
        return self.generate_ids(sources, num_beams=num_beams, max_new_tokens=max_new_tokens,
                                 length_penalty=length_penalty)

    def postprocess(self, batch, hyps: list[Hypothesis]) -> list[dict]:
        """``{"translation": str, "features": {...}}`` per item, in order."""
        unk = self.pre.unk_token_id
        results = []
        for src, hyp in zip(batch[0], hyps):
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
        return results

    def warmup(self) -> None:
        self.predict(["warm up"], num_beams=1, max_new_tokens=2)


def sort_by_length(sources: list[list[int]]) -> np.ndarray:
    """Order that groups similar source lengths (less padding when batching)."""
    return np.argsort([len(s) for s in sources], kind="stable")
