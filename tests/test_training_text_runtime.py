"""The torch-free text runtime on smoke models: validation errors, result shape, same numbers as torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from modelkit.onnx_session import SessionSettings
from modelkit.registry import load_version
from modelkit.runtimes import InputError, create_runtime
from modelkit.scores import above_threshold, ranked, sigmoid, softmax, thresholds_array, top_k
from modelkit.text import TextEncoder


def _runtime(registry, name, variant="fp32"):
    manifest, vdir = load_version(registry, name)
    rt = create_runtime(manifest, vdir, SessionSettings(provider="cpu", variant=variant))
    rt.load()
    return rt


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_single_label_results(smoke_registry, variant):
    rt = _runtime(smoke_registry, "sentiment", variant)
    out = rt.predict(["I love this car", rt.validate("terrible idea")], top_k=2)
    assert len(out) == 2
    for r in out:
        assert [x["label"] for x in r["labels"]][0] == r["features"]["predicted_class"]
        assert len(r["labels"]) == 2 and r["labels"][0]["score"] >= r["labels"][1]["score"]
        assert set(r["features"]) == set(rt.manifest.reference_profile.features)
    assert set(rt.last_timings) == {"preprocess", "inference", "postprocess"}
    full = rt.predict(["ok"])[0]
    assert abs(sum(x["score"] for x in full["labels"]) - 1.0) < 1e-5  # softmax over all labels by default


def test_multi_label_results(smoke_registry):
    rt = _runtime(smoke_registry, "topics")
    r = rt.predict(["library for parsing XML files in python"])[0]
    assert set(r["scores"]) == set(rt.manifest.labels)
    t = thresholds_array(rt.manifest.postprocessing.thresholds, len(rt.manifest.labels))
    chosen = {x["label"] for x in r["labels"]}
    assert chosen == {lab for i, lab in enumerate(rt.manifest.labels) if r["scores"][lab] >= t[i]}
    assert r["features"]["labels_per_item"] == len(chosen)


def test_validate_rejects_bad_text(smoke_registry):
    rt = _runtime(smoke_registry, "sentiment")
    with pytest.raises(InputError) as err:
        rt.validate("   ")
    assert err.value.field == "text" and err.value.limit == "non-empty"
    limit = rt.manifest.preprocessing.max_text_chars
    with pytest.raises(InputError) as err:
        rt.validate("x" * (limit + 1))
    assert err.value.field == "text" and err.value.limit == limit and str(limit) in str(err.value)
    with pytest.raises(InputError):
        rt.validate(123)
    assert rt.predict([]) == []


def test_long_text_is_truncated_and_counted(smoke_registry):
    rt = _runtime(smoke_registry, "sentiment")
    text = rt.validate("word " * 300)
    enc = rt.encoder.encode_batch([text])[0]
    assert len(enc.ids) == rt.manifest.preprocessing.max_length and enc.token_count >= 300


def test_runtime_matches_torch_free_helpers():
    logits = np.array([[1.0, 2.0, 0.5]])
    p = softmax(logits)[0]
    assert [x["label"] for x in top_k(p, ["a", "b", "c"], 2)] == ["b", "a"]
    s = sigmoid(np.array([0.0, 3.0, -3.0]))
    assert [x["label"] for x in above_threshold(s, ["a", "b", "c"], thresholds_array([0.5], 3))] == ["b", "a"]
    with pytest.raises(ValueError):
        thresholds_array([0.1, 0.2], 3)


def test_ranked_labels_carry_their_own_scores_best_first_ties_in_label_order():
    probs = np.array([[0.1, 0.4, 0.4, 0.1], [0.7, 0.05, 0.2, 0.05]])
    labels = ["a", "b", "c", "d"]
    assert ranked(probs, labels, 3) == [
        [{"label": "b", "score": 0.4}, {"label": "c", "score": 0.4}, {"label": "a", "score": 0.1}],
        [{"label": "a", "score": 0.7}, {"label": "c", "score": 0.2}, {"label": "b", "score": 0.05}],
    ]
    assert [[x["label"] for x in row] for row in ranked(probs, labels)] == [list("bcad"), list("acbd")]


def test_serving_modules_do_not_import_torch(smoke_registry):
    code = (
        "import sys; from modelkit.registry import load_version; from modelkit.runtimes import create_runtime;"
        f"m, d = load_version(__import__('pathlib').Path({str(smoke_registry)!r}), 'topics');"
        "rt = create_runtime(m, d); rt.load(); rt.predict(['hello']);"
        "bad = [k for k in sys.modules if k.split('.')[0] in ('torch', 'transformers')]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_encoder_pads_and_counts_unknowns(smoke_registry):
    m, vdir = load_version(smoke_registry, "sentiment")
    enc = TextEncoder.from_file(vdir / m.preprocessing.tokenizer_file, m.preprocessing.max_length)
    a, b = enc.encode_batch(["hello", "\u4e2d\u6587 hello there"])
    ids, mask = enc.pad([a, b])
    assert ids.shape == mask.shape == (2, max(len(a.ids), len(b.ids)))
    assert mask[0].sum() == len(a.ids) and (ids[0][mask[0] == 0] == enc.pad_token_id).all()
    assert b.unknown_tokens >= 1 and 0 < b.unknown_rate <= 1
