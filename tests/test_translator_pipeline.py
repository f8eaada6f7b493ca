"""Translator through the real training CLI (smoke preset, tiny pair file): registry, manifest, runtime."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from modelkit.registry import latest_version, load_version  # noqa: E402
from modelkit.runtimes import create_runtime  # noqa: E402
from modelkit.runtimes.base import InputError  # noqa: E402
from modelkit.onnx_session import SessionSettings  # noqa: E402
from training.cli import main  # noqa: E402

from test_translator_decoding import synthetic_pairs  # noqa: E402  (tests/ is on sys.path: rootdir-style imports)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tr-pipeline")
    data = folder / "pairs.tsv"
    data.write_text("".join(f"{p.src}\t{p.tgt}\n" for p in synthetic_pairs(300, seed=5)), encoding="utf-8")
    root = folder / "registry"
    rc = main(["train", "--preset", "smoke", "--models", "de-en", "--data", f"de-en={data}",
               "--registry", str(root), "--data-dir", str(folder / "data"), "--set", "train.progress=false"])
    assert rc == 0
    return root


def test_manifest_describes_the_seq2seq_version(registry):
    manifest, folder = load_version(registry, "de-en", latest_version(registry, "de-en"))
    assert manifest.task == "translation"
    assert {(g.role, g.variant) for g in manifest.graphs} == {
        (r, v) for r in ("encoder", "encoder_kv", "decoder", "decoder_with_past", "decoder_step") for v in ("fp32", "int8")}
    assert manifest.preprocessing.source_lang == "de" and manifest.preprocessing.target_lang == "en"
    gen = manifest.generation
    assert gen.num_decoder_layers == 1 and gen.num_heads * gen.head_dim == 32
    for key in ("chrf", "bleu", "chrf_greedy", "chrf_beam", "torch_match_greedy_b1", "torch_match_greedy_b16",
                "torch_match_beam_b16", "torch_match_continuous_greedy", "torch_match_continuous_beam"):
        assert key in manifest.metrics["fp32"], key
    assert manifest.metrics["fp32"]["torch_match_greedy_b1"] >= 0.99
    assert manifest.metrics["fp32"]["torch_match_continuous_greedy"] >= 0.99
    assert set(manifest.baseline_metrics) == {"retrieval", "copy_source"}
    assert set(manifest.reference_profile.features) == {"source_tokens", "unknown_rate", "length_ratio", "generated_tokens", "mean_logprob"}
    assert manifest.dataset.source == "user file pairs.tsv" and len(manifest.dataset.fingerprint) == 64
    assert (folder / "MODEL_CARD.md").read_text(encoding="utf-8").count("Sample test translations") == 1
    log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and "val_chrf" in log[0]


def test_registered_runtime_translates_and_rejects_bad_input(registry):
    manifest, folder = load_version(registry, "de-en", latest_version(registry, "de-en"))
    rt = create_runtime(manifest, folder, SessionSettings(provider="cpu", variant="int8"))
    rt.load()
    out = rt.predict([rt.validate("Der hund sieht ein haus.")])
    assert isinstance(out[0]["translation"], str) and "features" in out[0]
    with pytest.raises(InputError) as err:
        rt.validate("")
    assert err.value.field == "text"
