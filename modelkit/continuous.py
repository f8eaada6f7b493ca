"""Continuous (iteration-level) batching of encoder-decoder decoding over ONNX graphs, torch-free.

Sequences join the running batch between decoder steps and leave it as soon as they end, so a
short sentence never waits for a long one and a new one never waits for a whole batch. One
``ContinuousDecoder`` holds the key/value cache of every running row in slot buffers
``[rows, heads, positions, head_dim]``; the running rows always occupy slots ``0..rows-1`` (a
finished sequence's slots are refilled by moving the last rows down), so each step feeds plain
slices of the buffers, without gathering or copying the cache.

Graphs (roles in the manifest):

- ``encoder_kv``: ``input_ids``, ``attention_mask`` -> every decoder layer's cross-attention cache
  ``present.{i}.encoder.key|value`` [B, H, S, D]. Sequences admitted together run it as one batch;
  each joins the running batch at position 0 with the start token, so its first token comes from the
  next shared ``decoder_step`` call.
- ``encoder`` and ``decoder`` (first step) as in ``modelkit.seq2seq``, for versions exported before
  ``encoder_kv``: the new sequences' encoder pass and first decoder step run as two more calls, which
  fill the row's first self-attention slot and its cross-attention cache.
- ``decoder_step``: one token per row at the row's own ``positions``, a ``self_attention_mask``
  over its cache slots, the cache itself; returns the ``top_logprobs`` / ``top_tokens`` of the
  next token (suppressed tokens excluded) and this step's ``step_key_values.{i}.decoder.key|value``
  [rows, heads, 1, head_dim], which the caller writes into the row's next slot.

Greedy decoding takes each row's best token. Beam search (``BeamSearch``) is transformers'
``generate(num_beams=k, early_stopping=False)`` for one item, step for step as
``Seq2SeqDecoder.beam_search`` does it for a batch: an item's ``k`` beams occupy ``k`` rows, and the
global top ``2k`` continuations come from each beam's own top ``2k`` (the graph returns 16, enough for
``k <= 8``), ties broken by the flat index ``beam * vocab + token`` as a stable sort over
``[k * vocab]`` would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .seq2seq import NEG_INF, DecoderSpec, Hypothesis, cross_cache_names, log_softmax, pad_batch, self_cache_names

POSITION_BUCKET = 16  # cache capacity grows and shrinks by this many positions
# an encoder_kv call costs about as much as this many more source tokens (quick de-en, one thread: ~0.06 ms
# per call against ~0.012 ms per padded token), which is what splitting the joiners by length weighs
ENCODER_CALL_TOKENS = 8
FLOAT_BYTES = 4


def round_up(n: int, step: int = POSITION_BUCKET) -> int:
    return max(step, -(-n // step) * step)


def row_capacity(rows: int, max_rows: int) -> int:
    """Slot rows allocated for ``rows`` running rows: the next power of two, at most ``max_rows``."""
    return min(max_rows, 1 << max(0, rows - 1).bit_length()) if rows else 0


@dataclass(eq=False)
class Sequence:
    """One item being decoded: its source ids and settings, then its progress and result."""

    source: list[int]
    num_beams: int = 1
    max_new_tokens: int = 64
    length_penalty: float = 1.0
    tag: Any = None  # the caller's (request, index)
    tokens: list[int] = field(default_factory=list)  # greedy: generated so far
    sum_logprob: float = 0.0
    slots: list[int] = field(default_factory=list)  # rows it occupies (beam j in slots[j])
    beam: BeamSearch | None = None
    result: Hypothesis | None = None

    @property
    def rows(self) -> int:
        return self.num_beams

    @property
    def done(self) -> bool:
        return self.result is not None


class BeamSearch:
    """Beam search for one item, fed one step of candidates at a time."""

    def __init__(self, k: int, max_new_tokens: int, length_penalty: float, eos: int, vocab: int):
        self.k, self.max_new_tokens, self.length_penalty, self.eos, self.vocab = k, max_new_tokens, length_penalty, eos, vocab
        self.step = 0
        self.run_seq: list[list[int]] = [[] for _ in range(k)]
        self.run_score = np.full(k, NEG_INF, dtype=np.float32)
        self.run_score[0] = 0.0  # all beams start identical: only the first may expand at step 0
        self.sums = np.zeros(k, dtype=np.float64)
        self.fin_tokens: list[list[int]] = [[] for _ in range(k)]
        self.fin_score = np.full(k, NEG_INF, dtype=np.float32)
        self.fin_sum = np.zeros(k, dtype=np.float64)
        self.fin_done = np.zeros(k, dtype=bool)
        self.fin_eos = np.zeros(k, dtype=bool)
        self.improvable = True

    def advance(self, logp: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """One step: ``logp`` / ``tokens`` [beams, >= 2k] are each running beam's best continuations
        (one beam at the first step). Returns (source beam, new token) per beam, or None when done."""
        k, keep_k = self.k, 2 * self.k
        beams = logp.shape[0]
        total = (logp[:, :keep_k] + self.run_score[:beams, None]).reshape(-1)
        cand_tok = tokens[:, :keep_k].reshape(-1)
        cand_beam = np.repeat(np.arange(beams), keep_k)
        cand_logp = logp[:, :keep_k].reshape(-1)
        order = np.lexsort((cand_beam * self.vocab + cand_tok, -total))[:keep_k]
        top_score, top_beam, top_tok = total[order], cand_beam[order], cand_tok[order]
        top_sum = self.sums[top_beam] + cand_logp[order]
        cur_len = self.step + 1
        hits = (top_tok == self.eos) | (cur_len + 1 >= self.max_new_tokens + 1)
        if self.improvable:
            cand = top_score / (cur_len**self.length_penalty)
            for j in np.nonzero(hits[:k])[0].tolist():  # tolist(): iterating an array ends in a formatted IndexError
                worst = int(np.argmin(self.fin_score))
                if cand[j] > self.fin_score[worst]:
                    self.fin_tokens[worst] = [*self.run_seq[top_beam[j]], int(top_tok[j])]
                    self.fin_score[worst], self.fin_sum[worst] = cand[j], top_sum[j]
                    self.fin_done[worst] = True
                    self.fin_eos[worst] = bool(top_tok[j] == self.eos)
        masked = top_score + hits * NEG_INF
        nxt = np.argsort(-masked, kind="stable")[:k]
        src_beam, new_tok = top_beam[nxt], top_tok[nxt]
        self.run_score = masked[nxt].astype(np.float32)
        self.sums = top_sum[nxt]
        self.run_seq = [[*self.run_seq[b], t] for b, t in zip(src_beam.tolist(), new_tok.tolist())]
        self.step += 1
        best_running = self.run_score[0] / (cur_len**self.length_penalty)
        worst_fin = self.fin_score.min() if self.fin_done.all() else NEG_INF
        self.improvable = bool(self.improvable and best_running > worst_fin)
        if not self.improvable or hits.all():
            return None
        return src_beam, new_tok

    def best(self) -> Hypothesis:
        j = int(np.argmax(self.fin_score))
        return Hypothesis(self.fin_tokens[j], float(self.fin_sum[j]), bool(self.fin_eos[j]))


class _Cache:
    """Slot buffers: self-attention key/values [R, H, L, D] and cross-attention key/values [R, H, S, D]."""

    def __init__(self, n_tensors: int, heads: int, head_dim: int):
        self.n_tensors, self.heads, self.head_dim = n_tensors, heads, head_dim
        self.rows = self.self_len = self.src_len = 0
        self.self_kv: list[np.ndarray] = []
        self.cross_kv: list[np.ndarray] = []

    def bytes_for(self, rows: int, self_len: int, src_len: int) -> int:
        return self.n_tensors * rows * self.heads * (self_len + src_len) * self.head_dim * FLOAT_BYTES

    @property
    def nbytes(self) -> int:
        return self.bytes_for(self.rows, self.self_len, self.src_len)

    def resize(self, rows: int, self_len: int, src_len: int, keep: int) -> None:
        """New capacity; the first ``keep`` rows are copied over."""
        if (rows, self_len, src_len) == (self.rows, self.self_len, self.src_len):
            return
        h, d = self.heads, self.head_dim

        def grow(old: list[np.ndarray], length: int, old_length: int) -> list[np.ndarray]:
            out = []
            for i in range(self.n_tensors):
                buf = np.zeros((rows, h, length, d), dtype=np.float32)
                if keep and old:
                    m = min(length, old_length)
                    buf[:keep, :, :m] = old[i][:keep, :, :m]
                out.append(buf)
            return out

        self.self_kv = grow(self.self_kv, self_len, self.self_len)
        self.cross_kv = grow(self.cross_kv, src_len, self.src_len)
        self.rows, self.self_len, self.src_len = rows, self_len, src_len


class ContinuousDecoder:
    """The running batch of one model version: admit sequences, step them, drop them.

    Not thread-safe: one thread (the service's model thread) calls ``admit``, ``step`` and ``drop``.
    ``max_rows`` bounds the running rows (a beam item takes ``num_beams``); ``fits`` tells whether more
    sequences fit that and a key/value byte budget, counted on the buffers as they would be allocated.
    """

    def __init__(self, encoder, decoder, decoder_step, spec: DecoderSpec, *, max_rows: int = 64, encoder_kv=None):
        self.encoder, self.decoder, self.decoder_step, self.spec = encoder, decoder, decoder_step, spec
        self.encoder_kv = encoder_kv
        self.max_rows = max_rows
        n = spec.num_layers
        self._present_self, self._present_cross = self_cache_names(n, "present"), cross_cache_names(n, "present")
        self._past_self, self._past_cross = self_cache_names(n, "past_key_values"), cross_cache_names(n, "past_key_values")
        self._step_out = ["top_logprobs", "top_tokens", *self_cache_names(n, "step_key_values")]
        self.top_k = _output_width(decoder_step, "top_logprobs")
        self.cache = _Cache(2 * n, spec.num_heads, spec.head_dim)
        self.n = 0  # running rows (slots 0..n-1)
        self.sequences: list[Sequence] = []  # running sequences
        self._owner: list[tuple[Sequence, int]] = []  # slot -> (sequence, beam index)
        self._pos = np.zeros(0, dtype=np.int64)  # tokens cached per row (the next token's position)
        self._last = np.zeros(0, dtype=np.int64)  # the token each row feeds next
        self._src = np.zeros(0, dtype=np.int64)  # source length per row
        # beam search breaks ties by ``beam * vocab + token``: any bound above the largest token id orders them alike
        self.vocab = _output_width(decoder, "logits", required=False) or 1 << 32
        self.steps = 0

    # ------------------------------------------------------------------ capacity

    def max_beams(self) -> int:
        return self.top_k // 2

    def reserve(self, seqs: list[Sequence]) -> tuple[int, int, int]:
        """(rows, longest self-attention cache, longest source) that ``seqs`` need at most."""
        rows = sum(s.rows for s in seqs)
        return rows, max((s.max_new_tokens + 1 for s in seqs), default=0), max((len(s.source) for s in seqs), default=0)

    def bytes_needed(self, seqs: list[Sequence]) -> int:
        """Key/value bytes the buffers would take with the running sequences and ``seqs``, at most."""
        rows, self_len, src_len = self.reserve(self.sequences + seqs)
        c = self.cache  # as ``_ensure`` would allocate: capacities only grow while rows are running
        return c.bytes_for(max(c.rows, row_capacity(rows, max(self.max_rows, rows))),
                           max(c.self_len, round_up(self_len)), max(c.src_len, round_up(src_len)))

    def fits(self, seqs: list[Sequence], max_kv_bytes: int) -> bool:
        rows = self.n + sum(s.rows for s in seqs)
        return rows <= self.max_rows and self.bytes_needed(seqs) <= max_kv_bytes

    @property
    def rows(self) -> int:
        return self.n

    # ------------------------------------------------------------------ admit (encoder, first step)

    @property
    def first_token_at_admit(self) -> bool:
        """Whether ``admit`` takes the first token itself (no ``encoder_kv``) or the next ``step`` does."""
        return self.encoder_kv is None

    def admit(self, seqs: list[Sequence]) -> list[Sequence]:
        """Encode ``seqs`` together and add them to the running batch. Without ``encoder_kv`` their
        first token is taken here too; returns the sequences that already finished."""
        if not seqs:
            return []
        for s in seqs:
            if s.num_beams > self.max_beams():
                raise ValueError(f"num_beams {s.num_beams} > {self.max_beams()} (decoder_step returns {self.top_k} "
                                 "candidates per row)")
        spec = self.spec
        if self.encoder_kv is not None:
            for s in seqs:
                if s.num_beams > 1:
                    s.beam = BeamSearch(s.num_beams, s.max_new_tokens, s.length_penalty, spec.eos_token_id, self.vocab)
            for group in length_groups([len(s.source) for s in seqs]):
                ids, mask = pad_batch([seqs[i].source for i in group], spec.pad_token_id)
                cross_kv = self.encoder_kv.run(self._present_cross, {"input_ids": ids, "attention_mask": mask})
                self._place([(b, seqs[i], spec.bos_token_id) for b, i in enumerate(group)], None, cross_kv)
            return []
        ids, mask = pad_batch([s.source for s in seqs], spec.pad_token_id)
        (hidden,) = self.encoder.run(["encoder_hidden_states"], {"input_ids": ids, "attention_mask": mask})
        prefix = np.full((len(seqs), 1), spec.bos_token_id, dtype=np.int64)
        outs = self.decoder.run(["logits", *self._present_self, *self._present_cross],
                                {"input_ids": prefix, "encoder_hidden_states": hidden, "encoder_attention_mask": mask})
        n_self = len(self._present_self)
        self_kv, cross_kv = outs[1:1 + n_self], outs[1 + n_self:]
        logp = log_softmax(outs[0][:, -1, :])
        if spec.suppress_token_ids:
            logp[:, spec.suppress_token_ids] = -np.inf
        finished, joining = [], []
        for b, s in enumerate(seqs):
            if s.num_beams == 1:
                tok = int(logp[b].argmax())
                s.tokens.append(tok)
                s.sum_logprob += float(logp[b, tok])
                if tok == spec.eos_token_id or s.max_new_tokens <= 1:
                    s.result = Hypothesis(list(s.tokens), s.sum_logprob, tok == spec.eos_token_id)
                    finished.append(s)
                    continue
                joining.append((b, s, np.array([tok], dtype=np.int64)))
            else:
                s.beam = BeamSearch(s.num_beams, s.max_new_tokens, s.length_penalty, spec.eos_token_id, self.vocab)
                top = np.argsort(-logp[b], kind="stable")[: 2 * s.num_beams]
                nxt = s.beam.advance(logp[b][top][None, :], top[None, :])
                if nxt is None:
                    s.result = s.beam.best()
                    finished.append(s)
                    continue
                joining.append((b, s, nxt[1].astype(np.int64)))
        if joining:
            self._place(joining, self_kv, cross_kv)
        return finished

    def _place(self, joining, self_kv, cross_kv) -> None:
        """Slots for the joining sequences: their cross cache and, when ``self_kv`` (the first step's) is
        given, their first self-attention slot; otherwise they start at position 0 with ``first``."""
        new_rows = sum(s.rows for _, s, _ in joining)
        longest_src = max(len(s.source) for _, s, _ in joining)
        self._ensure(self.n + new_rows, src_len=longest_src, self_len=1)
        c = self.cache
        for b, s, first in joining:
            src = len(s.source)
            s.slots = list(range(self.n, self.n + s.rows))
            rows = slice(self.n, self.n + s.rows)
            if self_kv is not None:
                for buf, x in zip(c.self_kv, self_kv):
                    buf[rows, :, 0] = x[b, :, 0]
            for buf, x in zip(c.cross_kv, cross_kv):
                buf[rows, :, :src] = x[b, :, :src]
            self._pos[rows], self._src[rows], self._last[rows] = 0 if self_kv is None else 1, src, first
            self._owner.extend((s, j) for j in range(s.rows))
            self.n += s.rows
            self.sequences.append(s)

    # ------------------------------------------------------------------ step

    def step(self) -> list[Sequence]:
        """One decoder step for every running row; returns the sequences that finished (slots freed)."""
        n = self.n
        if n == 0:
            return []
        self._ensure(n, self_len=int(self._pos[:n].max()) + 1)
        c = self.cache
        positions = self._pos[:n]
        feeds = {
            "input_ids": self._last[:n, None],
            "positions": positions,
            "self_attention_mask": (np.arange(c.self_len)[None, :] < positions[:, None]).astype(np.int64),
            "encoder_attention_mask": (np.arange(c.src_len)[None, :] < self._src[:n, None]).astype(np.int64),
        }
        feeds.update((name, buf[:n]) for name, buf in zip(self._past_self, c.self_kv))
        feeds.update((name, buf[:n]) for name, buf in zip(self._past_cross, c.cross_kv))
        logp, tokens, *new = self.decoder_step.run(self._step_out, feeds)
        rows = np.arange(n)
        for buf, x in zip(c.self_kv, new):
            buf[rows, :, positions] = x[:, :, 0]
        self._pos[:n] += 1
        self.steps += 1
        return self._choose(logp, tokens)

    def _choose(self, logp: np.ndarray, tokens: np.ndarray) -> list[Sequence]:
        eos = self.spec.eos_token_id
        best_tok, best_logp = tokens[:, 0].tolist(), logp[:, 0].tolist()
        finished = []
        for s in self.sequences:
            if s.beam is None:
                r = s.slots[0]
                tok = best_tok[r]
                s.tokens.append(tok)
                s.sum_logprob += best_logp[r]
                if tok == eos or len(s.tokens) >= s.max_new_tokens:
                    s.result = Hypothesis(list(s.tokens), s.sum_logprob, tok == eos)
                    finished.append(s)
                else:
                    self._last[r] = tok
                continue
            slots = np.asarray(s.slots)
            live = slots[:1] if s.beam.step == 0 else slots  # every beam starts as the same row
            nxt = s.beam.advance(logp[live], tokens[live])
            if nxt is None:
                s.result = s.beam.best()
                finished.append(s)
                continue
            src_beam, new_tok = nxt
            if not np.array_equal(src_beam, np.arange(s.rows)):
                source_rows = slots[src_beam]
                for buf in self.cache.self_kv:
                    buf[slots] = buf[source_rows]
            self._last[slots] = new_tok
        if finished:
            self._release(finished)
        return finished

    # ------------------------------------------------------------------ leaving

    def drop(self, seqs: list[Sequence]) -> None:
        """Remove running sequences now (cancelled, past their deadline); their slots are freed."""
        self._release([s for s in seqs if s in self.sequences])

    def _release(self, seqs: list[Sequence]) -> None:
        gone = set(map(id, seqs))
        self.sequences = [s for s in self.sequences if id(s) not in gone]
        for r in sorted((r for s in seqs for r in s.slots), reverse=True):
            last = self.n - 1
            if r != last:
                self._move(last, r)
            self._owner.pop()
            self.n -= 1
        for s in seqs:
            s.slots = []
        self._shrink()

    def _move(self, src: int, dst: int) -> None:
        c = self.cache
        for buf in c.self_kv:
            buf[dst] = buf[src]
        for buf in c.cross_kv:
            buf[dst] = buf[src]
        self._pos[dst], self._last[dst], self._src[dst] = self._pos[src], self._last[src], self._src[src]
        seq, j = self._owner[src]
        self._owner[dst] = (seq, j)
        seq.slots[j] = dst

    # ------------------------------------------------------------------ buffers

    def _ensure(self, rows: int, *, self_len: int = 0, src_len: int = 0) -> None:
        """Capacity for ``rows`` rows, ``self_len`` cached positions and ``src_len`` source positions."""
        c = self.cache
        want_rows = max(c.rows, row_capacity(rows, max(self.max_rows, rows)))
        want_self = max(c.self_len, round_up(self_len))
        want_src = max(c.src_len, round_up(src_len))
        if (want_rows, want_self, want_src) != (c.rows, c.self_len, c.src_len):
            self._resize(want_rows, want_self, want_src)

    def _shrink(self) -> None:
        """Give memory back once the running rows need a quarter of the rows or half the positions."""
        c, n = self.cache, self.n
        if n == 0:
            if c.rows:
                self._resize(0, 0, 0)
            return
        rows = c.rows if n > c.rows // 4 else row_capacity(n, self.max_rows)
        need_self = round_up(int(self._pos[:n].max()) + 1)
        need_src = round_up(int(self._src[:n].max()))
        self_len = c.self_len if need_self > c.self_len // 2 else need_self
        src_len = c.src_len if need_src > c.src_len // 2 else need_src
        self._resize(rows, self_len, src_len)

    def _resize(self, rows: int, self_len: int, src_len: int) -> None:
        self.cache.resize(rows, self_len, src_len, keep=self.n)
        for name in ("_pos", "_last", "_src"):
            old = getattr(self, name)
            new = np.zeros(rows, dtype=np.int64)
            new[: self.n] = old[: self.n]
            setattr(self, name, new)

    # ------------------------------------------------------------------ whole batches (benchmarks, parity)

    def decode(self, sources: list[list[int]], *, num_beams: int, max_new_tokens: int,
               length_penalty: float = 1.0) -> list[Hypothesis]:
        """Decode a static batch (all admitted at once, stepped until every one ends)."""
        seqs = [Sequence(s, num_beams, max_new_tokens, length_penalty) for s in sources]
        self.admit(seqs)
        while self.n:
            self.step()
        return [s.result for s in seqs]


def length_groups(lengths: list[int], call_tokens: int = ENCODER_CALL_TOKENS) -> list[list[int]]:
    """Indices of ``lengths`` split into batches of similar length: the split that minimises the padded
    tokens plus ``call_tokens`` per batch (sorted by length, then the best contiguous cuts)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of the first j (sorted) items
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        widest = lengths[order[j - 1]]  # sorted: the last item of a group is its longest
        for i in range(j):
            cost = best[i] + call_tokens + (j - i) * widest
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


def _output_width(session, name: str, required: bool = True) -> int | None:
    """The static last dimension of a graph output (decoder_step's candidates per row, the vocabulary)."""
    for out in session.get_outputs():
        if out.name == name and isinstance(out.shape[-1], int):
            return out.shape[-1]
    if required:
        raise ValueError(f"decoder_step has no output {name!r} with a fixed width")
    return None


def kv_bytes_per_position(spec: DecoderSpec) -> int:
    """Bytes one cached position of one row takes (self- or cross-attention, every layer, key and value)."""
    return 2 * spec.num_layers * spec.num_heads * spec.head_dim * FLOAT_BYTES


__all__ = ["BeamSearch", "ContinuousDecoder", "Sequence", "kv_bytes_per_position", "length_groups"]
