"""Continuous batching (modelkit/continuous.py) over the decoder_step graph: parity and slot bookkeeping.

Uses the tiny translator of test_translator_decoding (trained for a few seconds on a synthetic
word-mapping language, so its outputs end with EOS at different lengths).
"""

from __future__ import annotations

import random

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from modelkit.continuous import ContinuousDecoder, Sequence, kv_bytes_per_position  # noqa: E402
from modelkit.onnx_session import SessionSettings  # noqa: E402
from modelkit.runtimes.translator import TranslatorRuntime  # noqa: E402
from test_translator_decoding import runtime_for, tiny  # noqa: E402, F401 (fixture)
from training.families.translator import (  # noqa: E402
    EOS,
    DecoderGraph,
    DecoderStepGraph,
    DecoderWithPastGraph,
    EncoderGraph,
    EncoderKVGraph,
    pad,
    torch_generate,
)


def staggered(dec: ContinuousDecoder, seqs: list[Sequence], seed: int = 0, max_kv_bytes: int = 1 << 40) -> None:
    """Admit a few sequences before each step (0 to 4, at random) while they fit; step until all end."""
    rng = random.Random(seed)
    pending = list(seqs)
    while pending or dec.rows:
        take = []
        for s in pending[: rng.randint(0, 4)]:
            if not dec.fits(take + [s], max_kv_bytes):
                break
            take.append(s)
        pending = pending[len(take):]
        dec.admit(take)
        dec.step()


def test_step_graph_equals_one_row_with_past_per_row(tiny):
    """Rows at different lengths in one decoder_step call = each row alone through decoder_with_past."""
    *_, model, _, _, _ = tiny
    src = [[5, 6, 7, EOS], [8, 9, EOS], [5, 5, 9, 9, 6, EOS]]
    ids, mask = pad(src)
    prefix = torch.tensor([[1, 10, 11, 12, 13]] * 3)
    lengths = [2, 5, 3]
    with torch.no_grad():
        hidden = EncoderGraph(model)(ids, mask)
        outs = DecoderGraph(model)(prefix, hidden, mask)
        n = model.config.decoder_layers
        self_kv, cross_kv = outs[1:1 + 2 * n], outs[1 + 2 * n:]
        nxt = torch.tensor([[14], [15], [16]])
        self_mask = torch.zeros(3, 5, dtype=torch.long)
        for j, length in enumerate(lengths):
            self_mask[j, :length] = 1
        logp, tokens, *new = DecoderStepGraph(model)(nxt, torch.tensor(lengths), self_mask, mask, *self_kv, *cross_kv)
        for j, length in enumerate(lengths):
            past = [x[j:j + 1, :, :length] for x in self_kv] + [x[j:j + 1] for x in cross_kv]
            ref = DecoderWithPastGraph(model)(nxt[j:j + 1], mask[j:j + 1], *past)
            ref_logp = torch.log_softmax(ref[0][0, -1], -1)
            ref_logp[[0, 1]] = float("-inf")  # pad and <s> are never generated
            top = torch.topk(ref_logp, logp.shape[1])
            assert torch.allclose(logp[j], top.values, atol=1e-5)
            assert torch.equal(tokens[j], top.indices)
            for got, want in zip(new, ref[1:]):  # this step's key/values = the last slot of the grown cache
                assert torch.allclose(got[j, :, 0], want[0, :, -1], atol=1e-5)


def test_encoder_kv_graph_is_the_first_steps_cross_cache(tiny):
    """encoder_kv = the cross-attention key/values the first-step decoder computes from the encoder output."""
    *_, model, _, _, _ = tiny
    ids, mask = pad([[5, 6, 7, EOS], [8, 9, EOS], [5, 5, 9, 9, 6, EOS]])
    with torch.no_grad():
        hidden = EncoderGraph(model)(ids, mask)
        n = model.config.decoder_layers
        want = DecoderGraph(model)(torch.ones(3, 1, dtype=torch.long), hidden, mask)[1 + 2 * n:]
        got = EncoderKVGraph(model)(ids, mask)
    assert len(got) == len(want) == 2 * n
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-6)


def without_encoder_kv(tiny) -> TranslatorRuntime:
    """The tiny version as exported before encoder_kv existed: admit runs the first-step decoder itself."""
    *_, folder, manifest, _ = tiny
    old = manifest.model_copy(update={"graphs": [g for g in manifest.graphs if g.role != "encoder_kv"]})
    rt = TranslatorRuntime(old, folder, SessionSettings(provider="cpu"))
    rt.load()
    return rt


@pytest.mark.parametrize("admit", ["encoder_kv", "first_step_decoder"])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_continuous_equals_the_batch_decoder(tiny, num_beams, admit):
    """Sequences joining and leaving at different steps decode exactly as the request batcher's decoder,
    whether the joiners' first token comes from the shared step (encoder_kv) or from a decoder call at admit."""
    fam, cfg, splits, *_ = tiny
    rt = runtime_for(tiny) if admit == "encoder_kv" else without_encoder_kv(tiny)
    src, _ = splits.state["test_ids"]
    ref = [rt.generate_ids([s], num_beams=num_beams, max_new_tokens=20)[0] for s in src]
    seqs = [Sequence(s, num_beams, 20) for s in src]
    dec = rt.continuous_decoder(max_rows=12)
    assert dec.first_token_at_admit == (admit == "first_step_decoder")
    staggered(dec, seqs)
    assert [s.result.tokens for s in seqs] == [h.tokens for h in ref]
    assert [s.result.finished for s in seqs] == [h.finished for h in ref]
    assert np.allclose([s.result.sum_logprob for s in seqs], [h.sum_logprob for h in ref], atol=1e-4)
    assert dec.rows == 0 and dec.cache.nbytes == 0  # every slot freed, buffers released


def test_continuous_matches_torch_generate(tiny):
    fam, cfg, splits, model, *_ = tiny
    rt = runtime_for(tiny)
    src, _ = splits.state["test_ids"]
    ref = torch_generate(model, src, num_beams=1, max_new_tokens=20, batch_size=16)
    assert [h.tokens for h in rt.generate_continuous(src, num_beams=1, max_new_tokens=20)] == ref
    beam_ref = torch_generate(model, src, num_beams=3, max_new_tokens=20, batch_size=16)
    beam = [h.tokens for h in rt.generate_continuous(src, num_beams=3, max_new_tokens=20)]
    assert np.mean([a == b for a, b in zip(beam, beam_ref)]) >= 0.95


@pytest.mark.parametrize("num_beams", [1, 3])
def test_max_new_tokens_and_eos(tiny, num_beams):
    fam, cfg, splits, *_ = tiny
    rt = runtime_for(tiny)
    src, _ = splits.state["test_ids"]
    short = rt.generate_continuous(src[:8], num_beams=num_beams, max_new_tokens=2)
    assert all(len(h.tokens) <= 2 for h in short)
    one = rt.generate_continuous(src[:8], num_beams=num_beams, max_new_tokens=1)
    assert all(len(h.tokens) == 1 for h in one)
    out = rt.generate_continuous(src[:16], num_beams=num_beams, max_new_tokens=20)
    assert len({len(h.tokens) for h in out}) > 1, "rows should finish at different steps"
    for h in out:
        assert h.tokens.count(EOS) == (1 if h.finished else 0)


def test_drop_frees_rows_and_the_others_go_on(tiny):
    fam, cfg, splits, *_ = tiny
    rt = runtime_for(tiny)
    src, _ = splits.state["test_ids"]
    ref = [rt.generate_ids([s], num_beams=b, max_new_tokens=20)[0] for s, b in zip(src[:6], (1, 3) * 3)]
    dec = rt.continuous_decoder(max_rows=16)
    seqs = [Sequence(s, b, 20) for s, b in zip(src[:6], (1, 3) * 3)]
    dec.admit(seqs)
    dec.step()
    victims = [s for s in seqs[:2] if not s.done]
    rows_before = dec.rows
    dec.drop(victims)
    assert dec.rows == rows_before - sum(s.rows for s in victims)
    assert all(s.slots == [] and s.result is None for s in victims)
    while dec.rows:
        dec.step()
    for s, h in zip(seqs, ref):
        if s not in victims:
            assert s.result.tokens == h.tokens  # moving rows into freed slots changed nothing


def test_fits_counts_rows_and_the_buffers_as_allocated(tiny):
    fam, cfg, splits, *_ = tiny
    rt = runtime_for(tiny)
    src, _ = splits.state["test_ids"]
    dec = rt.continuous_decoder(max_rows=8)
    per_pos = kv_bytes_per_position(rt.spec)
    seqs = [Sequence(s, 3, 20) for s in src[:3]]
    assert dec.fits(seqs[:2], 1 << 30) and not dec.fits(seqs, 1 << 30)  # 9 rows > 8
    need = dec.bytes_needed(seqs[:2])
    src_cap = -(-max(len(s) for s in src[:2]) // 16) * 16
    assert need == 8 * (32 + src_cap) * per_pos  # 6 rows -> 8 allocated; 21 positions -> 32; source by 16
    assert not dec.fits(seqs[:2], need - 1)
    dec.admit(seqs[:2])
    while dec.rows:
        assert dec.cache.nbytes <= need
        dec.step()
    waiting = [Sequence(s, 1, 20) for s in src[:20]]
    staggered(dec, waiting, max_kv_bytes=2 * (32 + 128) * per_pos)  # two rows at a time at most
    assert all(s.done for s in waiting)


def test_versions_without_decoder_step_have_no_continuous_path(tiny):
    *_, folder, manifest, _ = tiny
    old = manifest.model_copy(update={"graphs": [g for g in manifest.graphs if g.role != "decoder_step"]})
    rt = TranslatorRuntime(old, folder, SessionSettings(provider="cpu"))
    rt.load()
    assert not rt.supports_continuous
    with pytest.raises(ValueError, match="decoder_step"):
        rt.continuous_decoder()
    assert runtime_for(tiny).supports_continuous
