"""Translator export and torch-free decoding: parity with torch, EOS handling, limits, input checks.

A tiny Marian model is trained for a few seconds on a synthetic word-mapping language so that
it emits EOS at sensible lengths; its three graphs are exported with the real exporter.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from modelkit.manifest import Manifest  # noqa: E402
from modelkit.onnx_session import SessionSettings  # noqa: E402
from modelkit.runtimes.base import InputError  # noqa: E402
from modelkit.runtimes.translator import TranslatorRuntime  # noqa: E402
from training.config import validate_config  # noqa: E402
from training.data.translation import Pair  # noqa: E402
from training.export import export_all  # noqa: E402
from training.families.translator import EOS, MODELS, TranslatorConfig, torch_generate  # noqa: E402

WORDS = {"haus": "house", "baum": "tree", "rot": "red", "grün": "green", "groß": "big", "klein": "small",
         "der": "the", "ein": "a", "sieht": "sees", "hund": "dog", "katze": "cat", "und": "and"}


def synthetic_pairs(n: int, seed: int = 0) -> list[Pair]:
    rng = random.Random(seed)
    pairs = {}
    de = list(WORDS)
    while len(pairs) < n:
        words = [rng.choice(de) for _ in range(rng.randint(2, 7))]
        src = " ".join(words) + "."
        pairs[src] = Pair(src.capitalize(), (" ".join(WORDS[w] for w in words) + ".").capitalize(), "synthetic")
    return list(pairs.values())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(family, cfg, splits, torch model, version folder, manifest) for a tiny trained translator."""
    fam = MODELS["de-en"]
    raw = fam.presets()["smoke"]
    raw["data"] = {"val_size": 10, "test_size": 40, "seed": 3}
    raw["model"].update({"max_new_tokens": 20, "num_beams": 3})
    cfg = validate_config("de-en", TranslatorConfig, raw)
    splits = fam.prepare_data(cfg, tmp_path_factory.mktemp("data"), pairs=synthetic_pairs(400))
    torch.manual_seed(0)
    model = fam.build_model(cfg, splits)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    stream = fam.batches(cfg, splits, "train", shuffle=True, seed=1)
    model.train()
    for _ in range(400):
        loss = fam.loss(model, next(stream))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    folder = tmp_path_factory.mktemp("version")
    assets = fam.write_assets(model, cfg, splits, folder)
    exported = export_all(fam.export_graphs(model, cfg, splits), cfg.export, folder, log=lambda *_: None)
    # only the fields the runtime reads; the full manifest is covered by the pipeline tests
    manifest = Manifest.model_construct(name="tiny", version="v1", graphs=exported.graphs,
                                        preprocessing=assets.preprocessing, generation=assets.generation)
    return fam, cfg, splits, model, folder, manifest, exported


def runtime_for(tiny, variant="fp32") -> TranslatorRuntime:
    *_, folder, manifest, _ = tiny
    rt = TranslatorRuntime(manifest, folder, SessionSettings(provider="cpu", variant=variant))
    rt.load()
    return rt


def test_export_parity_every_graph(tiny):
    exported = tiny[-1]
    roles = {(g.role, g.variant) for g in exported.graphs}
    assert roles == {(r, v) for r in ("encoder", "encoder_kv", "decoder", "decoder_with_past", "decoder_step")
                     for v in ("fp32", "int8")}
    fp32 = next(p for p in exported.parity if p.variant == "fp32")
    assert fp32.passed and fp32.max_abs_diff <= 1e-4
    past = next(g for g in exported.graphs if g.role == "decoder_with_past" and g.variant == "fp32")
    assert "past_key_values.0.decoder.key" in [t.name for t in past.inputs]
    assert "present.0.decoder.key" in [t.name for t in past.outputs]


def test_model_learned_to_stop(tiny):
    fam, cfg, splits, model, *_ = tiny
    src, _ = splits.state["test_ids"]
    hyps = torch_generate(model, src, num_beams=1, max_new_tokens=20)
    assert sum(h[-1:] == [EOS] for h in hyps) >= 0.8 * len(hyps), "fixture model should end most outputs with EOS"


@pytest.mark.parametrize("batch_size", [1, 16])
def test_greedy_equals_torch_generate(tiny, batch_size):
    fam, cfg, splits, model, *_ = tiny
    rt = runtime_for(tiny)
    src, _ = splits.state["test_ids"]
    ref = torch_generate(model, src, num_beams=1, max_new_tokens=20, batch_size=batch_size)
    got = []
    for i in range(0, len(src), batch_size):
        got += [h.tokens for h in rt.generate_ids(src[i:i + batch_size], num_beams=1, max_new_tokens=20)]
    assert got == ref


def test_greedy_with_and_without_cache_agree(tiny):
    fam, cfg, splits, *_ = tiny
    rt = runtime_for(tiny)
    src, _ = splits.state["test_ids"]
    cached = rt.generate_ids(src[:16], num_beams=1, max_new_tokens=20)
    uncached = rt.generate_ids(src[:16], num_beams=1, max_new_tokens=20, use_cache=False)
    assert [h.tokens for h in cached] == [h.tokens for h in uncached]
    assert np.allclose([h.sum_logprob for h in cached], [h.sum_logprob for h in uncached], atol=1e-3)


def test_beam_search_matches_torch(tiny):
    fam, cfg, splits, model, *_ = tiny
    rt = runtime_for(tiny)
    src, _ = splits.state["test_ids"]
    ref = torch_generate(model, src, num_beams=3, max_new_tokens=20, batch_size=16)
    got = []
    for i in range(0, len(src), 16):
        got += [h.tokens for h in rt.generate_ids(src[i:i + 16], num_beams=3, max_new_tokens=20)]
    agree = np.mean([a == b for a, b in zip(got, ref)])
    assert agree >= 0.95, f"beam agreement {agree:.2f}"
    uncached = []
    for i in range(0, len(src), 16):
        uncached += [h.tokens for h in rt.generate_ids(src[i:i + 16], num_beams=3, max_new_tokens=20, use_cache=False)]
    assert uncached == got


def test_eos_stops_each_sequence_independently(tiny):
    fam, cfg, splits, *_ = tiny
    rt = runtime_for(tiny)
    src, _ = splits.state["test_ids"]
    batch = rt.generate_ids(src[:16], num_beams=1, max_new_tokens=20)
    for h, s in zip(batch, src[:16]):
        alone = rt.generate_ids([s], num_beams=1, max_new_tokens=20)[0]
        assert h.tokens == alone.tokens  # padding and other rows finishing earlier change nothing
        assert h.tokens.count(EOS) == (1 if h.finished else 0)
        if h.finished:
            assert h.tokens[-1] == EOS
    lengths = {len(h.tokens) for h in batch}
    assert len(lengths) > 1, "rows should finish at different steps"


@pytest.mark.parametrize("num_beams", [1, 3])
def test_max_new_tokens_respected(tiny, num_beams):
    fam, cfg, splits, *_ = tiny
    rt = runtime_for(tiny)
    src, _ = splits.state["test_ids"]
    short = rt.generate_ids(src[:8], num_beams=num_beams, max_new_tokens=2)
    assert all(len(h.tokens) <= 2 for h in short)
    rt.decoder.spec.suppress_token_ids.append(EOS)  # EOS impossible: every row must stop at the limit
    capped = rt.generate_ids(src[:8], num_beams=num_beams, max_new_tokens=5)
    assert all(len(h.tokens) == 5 and not h.finished for h in capped)


def test_predict_output_and_features(tiny):
    rt = runtime_for(tiny, "int8")
    out = rt.predict([rt.validate("Der hund sieht ein haus."), rt.validate({"text": "Rot und grün."})], num_beams=2)
    assert len(out) == 2 and all(isinstance(r["translation"], str) for r in out)
    assert set(out[0]["features"]) == {"source_tokens", "unknown_rate", "length_ratio", "generated_tokens", "mean_logprob"}
    assert out[0]["features"]["mean_logprob"] <= 0
    assert set(rt.last_timings) == {"preprocess", "inference", "postprocess"}
    unk = rt.predict([rt.validate("Ω")], num_beams=1)[0]["features"]["unknown_rate"]
    assert unk > 0  # a character the tokenizer never saw


@pytest.mark.parametrize(
    "item, field, limit",
    [("", "text", "non-empty"), ("   ", "text", "non-empty"), (None, "text", "string"),
     ("x" * 1001, "text", 1000), ({"text": "haus " * 200}, "text", 128)],
)
def test_bad_input_rejected(tiny, item, field, limit):
    rt = runtime_for(tiny)
    with pytest.raises(InputError) as err:
        rt.validate(item)
    assert err.value.field == field and err.value.limit == limit


def test_empty_batch(tiny):
    assert runtime_for(tiny).predict([]) == []
