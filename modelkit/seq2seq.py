"""Torch-free encoder-decoder decoding over ONNX graphs: greedy and beam search with a KV cache.

Three graphs, named by role in the manifest:

- ``encoder``: ``input_ids``, ``attention_mask`` -> ``encoder_hidden_states``.
- ``decoder`` (first step, or every step without a cache): ``input_ids`` [B, T],
  ``encoder_hidden_states``, ``encoder_attention_mask`` -> ``logits`` [B, T, V] and
  ``present.{i}.decoder.key|value`` [B, H, T, D], ``present.{i}.encoder.key|value`` [B, H, S, D].
- ``decoder_with_past``: ``input_ids`` [B, 1], ``encoder_attention_mask`` and
  ``past_key_values.{i}.decoder|encoder.key|value`` -> ``logits`` [B, 1, V] and
  ``present.{i}.decoder.key|value`` [B, H, P + 1, D] (the cross-attention cache never changes).

Greedy and beam search follow transformers' ``generate()`` step for step (log-softmax,
then suppressed tokens set to -inf; beam search keeps 2 * num_beams candidates per step,
finishes hypotheses on EOS or at the length limit with score sum(logp) / len**length_penalty,
and stops an item when no running beam can beat its worst finished one), so the ONNX
output can be checked token for token against torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

NEG_INF = -1.0e9


@dataclass
class Hypothesis:
    """One decoded sequence: generated token ids (EOS included when reached) and their log-probs."""

    tokens: list[int]
    sum_logprob: float
    finished: bool  # True when it ended with EOS (False: cut at max_new_tokens)

    @property
    def mean_logprob(self) -> float:
        return self.sum_logprob / max(len(self.tokens), 1)


@dataclass
class DecoderSpec:
    """What decoding needs to know about the model (from the manifest)."""

    num_layers: int
    num_heads: int
    head_dim: int
    bos_token_id: int  # decoder start token
    eos_token_id: int
    pad_token_id: int
    suppress_token_ids: list[int] = field(default_factory=list)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    m = x.max(axis=-1, keepdims=True)
    shifted = x - m
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def self_cache_names(num_layers: int, prefix: str) -> list[str]:
    return [f"{prefix}.{i}.decoder.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def cross_cache_names(num_layers: int, prefix: str) -> list[str]:
    return [f"{prefix}.{i}.encoder.{kv}" for i in range(num_layers) for kv in ("key", "value")]


class Seq2SeqDecoder:
    """Runs the encoder and decoder sessions; greedy or beam search, with or without the KV cache.

    ``encoder``, ``decoder`` and ``decoder_with_past`` are onnxruntime InferenceSessions (or
    anything with the same ``run(output_names, feeds)`` method); ``decoder_with_past`` may be
    None when only uncached decoding is wanted.
    """

    def __init__(self, encoder, decoder, decoder_with_past, spec: DecoderSpec):
        self.encoder = encoder
        self.decoder = decoder
        self.decoder_with_past = decoder_with_past
        self.spec = spec
        n = spec.num_layers
        self._present_self = self_cache_names(n, "present")
        self._present_cross = cross_cache_names(n, "present")
        self._past_self = self_cache_names(n, "past_key_values")
        self._past_cross = cross_cache_names(n, "past_key_values")

    # ------------------------------------------------------------------ graph calls

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        (hidden,) = self.encoder.run(["encoder_hidden_states"], {"input_ids": input_ids, "attention_mask": attention_mask})
        return hidden

    def _first_step(self, tokens: np.ndarray, hidden: np.ndarray, mask: np.ndarray):
        """Decoder over the whole prefix: (logits of the last position, self cache, cross cache)."""
        outs = self.decoder.run(
            ["logits", *self._present_self, *self._present_cross],
            {"input_ids": tokens, "encoder_hidden_states": hidden, "encoder_attention_mask": mask},
        )
        n = len(self._present_self)
        return outs[0][:, -1, :], list(outs[1 : 1 + n]), list(outs[1 + n :])

    def _next_step(self, last: np.ndarray, mask: np.ndarray, self_cache: list, cross_cache: list):
        feeds = {"input_ids": last[:, None], "encoder_attention_mask": mask}
        feeds.update(zip(self._past_self, self_cache))
        feeds.update(zip(self._past_cross, cross_cache))
        outs = self.decoder_with_past.run(["logits", *self._present_self], feeds)
        return outs[0][:, -1, :], list(outs[1:])

    def _step_logprobs(self, logits: np.ndarray) -> np.ndarray:
        logp = log_softmax(logits)
        if self.spec.suppress_token_ids:
            logp[:, self.spec.suppress_token_ids] = -np.inf
        return logp

    # ------------------------------------------------------------------ greedy

    def greedy(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, *, max_new_tokens: int, use_cache: bool = True
    ) -> list[Hypothesis]:
        """Greedy decoding of a padded batch; each row stops at its own EOS or at max_new_tokens."""
        if use_cache and self.decoder_with_past is None:
            raise ValueError("use_cache=True needs the decoder_with_past graph")
        batch = input_ids.shape[0]
        hidden = self.encode(input_ids, attention_mask)
        tokens: list[list[int]] = [[] for _ in range(batch)]
        sums = np.zeros(batch, dtype=np.float64)
        finished = np.zeros(batch, dtype=bool)
        active = np.arange(batch)  # rows still decoding; finished rows are dropped from the batch
        prefix = np.full((batch, 1), self.spec.bos_token_id, dtype=np.int64)
        mask = attention_mask
        self_cache = cross_cache = None
        for step in range(max_new_tokens):
            if step == 0 or not use_cache:
                logits, self_cache, cross_cache = self._first_step(prefix, hidden, mask)
            else:
                logits, self_cache = self._next_step(prefix[:, -1], mask, self_cache, cross_cache)
            logp = self._step_logprobs(logits)
            nxt = logp.argmax(axis=-1)
            chosen = logp[np.arange(len(nxt)), nxt]
            for row, tok, lp in zip(active, nxt.tolist(), chosen.tolist()):
                tokens[row].append(tok)
                sums[row] += lp
            done = nxt == self.spec.eos_token_id
            finished[active[done]] = True
            prefix = np.concatenate([prefix, nxt[:, None].astype(np.int64)], axis=1)
            if done.all():
                break
            if done.any():
                keep = ~done
                active, prefix, hidden, mask = active[keep], prefix[keep], hidden[keep], mask[keep]
                self_cache = [c[keep] for c in self_cache]
                cross_cache = [c[keep] for c in cross_cache]
        return [Hypothesis(tokens[i], float(sums[i]), bool(finished[i])) for i in range(batch)]

    # ------------------------------------------------------------------ beam search

    def beam_search(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        *,
        num_beams: int,
        max_new_tokens: int,
        length_penalty: float = 1.0,
        use_cache: bool = True,
    ) -> list[Hypothesis]:
        """Beam search as transformers' ``generate(num_beams=k, early_stopping=False)``; best hypothesis per row."""
        if num_beams == 1:
            return self.greedy(input_ids, attention_mask, max_new_tokens=max_new_tokens, use_cache=use_cache)
        if use_cache and self.decoder_with_past is None:
            raise ValueError("use_cache=True needs the decoder_with_past graph")
        spec, k = self.spec, num_beams
        batch = input_ids.shape[0]
        keep_k = 2 * k  # candidates kept per step so that k can continue after some finish
        hidden = self.encode(input_ids, attention_mask)
        hidden_b = np.repeat(hidden, k, axis=0)
        mask_b = np.repeat(attention_mask, k, axis=0)

        # running beams: generated tokens so far [B, K, t], cumulative log-probs [B, K]
        run_seq = np.zeros((batch, k, 0), dtype=np.int64)
        run_score = np.full((batch, k), NEG_INF, dtype=np.float32)
        run_score[:, 0] = 0.0  # all beams start identical: only the first may expand at step 0
        # finished hypotheses per item: best k so far (score after length penalty)
        fin_tokens: list[list[list[int]]] = [[[] for _ in range(k)] for _ in range(batch)]
        fin_score = np.full((batch, k), NEG_INF, dtype=np.float32)
        fin_sum = np.zeros((batch, k), dtype=np.float64)
        fin_done = np.zeros((batch, k), dtype=bool)
        fin_eos = np.zeros((batch, k), dtype=bool)
        improvable = np.ones(batch, dtype=bool)
        sums = np.zeros((batch, k), dtype=np.float64)  # raw log-prob sums of running beams

        self_cache = cross_cache = None
        for step in range(max_new_tokens):
            cur_len = step + 1  # decoder prompt (start token) + generated so far
            prefix = np.concatenate(
                [np.full((batch * k, 1), spec.bos_token_id, dtype=np.int64), run_seq.reshape(batch * k, step)], axis=1
            )
            if step == 0 and use_cache:
                # every beam of an item has the same prefix: run one row per item, then copy
                logits, self_cache, cross_cache = self._first_step(prefix[::k], hidden, attention_mask)
                logits = np.repeat(logits, k, axis=0)
                self_cache = [np.repeat(c, k, axis=0) for c in self_cache]
                cross_cache = [np.repeat(c, k, axis=0) for c in cross_cache]
            elif not use_cache:
                logits, _, _ = self._first_step(prefix, hidden_b, mask_b)
            else:
                logits, self_cache = self._next_step(prefix[:, -1], mask_b, self_cache, cross_cache)
            logp = self._step_logprobs(logits).reshape(batch, k, -1)
            vocab = logp.shape[-1]
            total = (logp + run_score[:, :, None]).reshape(batch, k * vocab)

            # top 2k continuations, best first (stable sort: ties keep the lower index, like torch.topk here)
            top_idx = np.argsort(-total, axis=1, kind="stable")[:, :keep_k]
            top_score = np.take_along_axis(total, top_idx, axis=1)
            top_beam, top_tok = top_idx // vocab, top_idx % vocab
            top_sum = np.take_along_axis(sums, top_beam, axis=1) + np.take_along_axis(
                logp.reshape(batch, k * vocab), top_idx, axis=1
            )
            at_limit = cur_len + 1 >= max_new_tokens + 1
            hits = (top_tok == spec.eos_token_id) | at_limit

            # finished: only among the first k candidates, with the length penalty, while improvable
            gen_len = cur_len  # tokens generated including this one (the start token is the prompt)
            cand = top_score / (gen_len**length_penalty)
            ok = hits & (np.arange(keep_k) < k)[None, :] & improvable[:, None]
            for b in np.nonzero(ok.any(axis=1))[0].tolist():  # tolist(): see continuous.BeamSearch.advance
                for j in np.nonzero(ok[b])[0].tolist():
                    score = cand[b, j]
                    worst = int(np.argmin(fin_score[b]))
                    if score > fin_score[b, worst]:
                        beam = top_beam[b, j]
                        fin_tokens[b][worst] = [*run_seq[b, beam].tolist(), int(top_tok[b, j])]
                        fin_score[b, worst], fin_sum[b, worst] = score, top_sum[b, j]
                        fin_done[b, worst] = True
                        fin_eos[b, worst] = bool(top_tok[b, j] == spec.eos_token_id)

            # running: best k candidates that did not hit a stop
            masked = top_score + hits * NEG_INF
            nxt = np.argsort(-masked, axis=1, kind="stable")[:, :k]
            src_beam = np.take_along_axis(top_beam, nxt, axis=1)
            new_tok = np.take_along_axis(top_tok, nxt, axis=1)
            run_score = np.take_along_axis(masked, nxt, axis=1).astype(np.float32)
            sums = np.take_along_axis(top_sum, nxt, axis=1)
            run_seq = np.concatenate(
                [np.take_along_axis(run_seq, src_beam[:, :, None], axis=1), new_tok[:, :, None]], axis=2
            )
            if use_cache:
                order = (np.arange(batch)[:, None] * k + src_beam).reshape(-1)
                self_cache = [c[order] for c in self_cache]

            # an item stops improving once its best running beam cannot beat its worst finished one
            best_running = run_score[:, 0] / ((cur_len + 1 - 1) ** length_penalty)
            worst_fin = np.where(fin_done.all(axis=1), fin_score.min(axis=1), NEG_INF)
            improvable &= best_running > worst_fin
            if not improvable.any() or hits.all():
                break

        out = []
        for b in range(batch):
            j = int(np.argmax(fin_score[b]))
            out.append(Hypothesis(fin_tokens[b][j], float(fin_sum[b, j]), bool(fin_eos[b, j])))
        return out


def pad_batch(sequences: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded int64 ids and attention mask."""
    width = max(len(s) for s in sequences)
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask
