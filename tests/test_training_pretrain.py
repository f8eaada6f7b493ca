"""The shared pretraining stage (``python -m training pretrain``) on the smoke preset: the artefact and
its manifest, held-out texts kept out of its corpus, fine-tuning from it, and the refusal of an
encoder that saw a test text."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from modelkit.manifest import Manifest
from modelkit.registry import latest_version, sha256_file
from training import pretrained
from training.cli import main, resolve_configs
from training.data.corpus import seen_in, text_key
from training.families.text_classifier import MODELS
from training.pretrain import IGNORE, mask_batch, pack

SPECIAL = {"pad": 0, "cls": 2, "sep": 3, "mask": 4}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return Path(os.environ.get("SMOKE_DATA_DIR", tmp_path_factory.mktemp("pretrain-data")))


@pytest.fixture(scope="module")
def encoder(tmp_path_factory, data_dir) -> Path:
    """A registry whose only content is a smoke-preset encoder made by the `pretrain` command."""
    registry = tmp_path_factory.mktemp("pretrain-registry")
    assert main(["pretrain", "--preset", "smoke", "--registry", str(registry), "--data-dir", str(data_dir)]) == 0
    folder = pretrained.latest(registry, pretrained.DEFAULT_NAME)
    assert folder is not None
    return folder


def test_pretrain_publishes_an_encoder_with_its_manifest(encoder):
    m = pretrained.load_manifest(encoder)
    assert {f.path for f in m.files} >= {"config.json", "model.safetensors", "tokenizer.json", "corpus_keys.npy",
                                         "train_log.jsonl"}
    for f in m.files:
        assert sha256_file(encoder / f.path) == f.sha256, f.path
    assert set(m.corpus) == {"tweets", "debian", "libreoffice", "ding"}
    keys = pretrained.load_keys(encoder)
    assert len(keys) == sum(s.texts for s in m.corpus.values()) == m.config["data"]["max_examples"]
    assert np.all(keys[1:] >= keys[:-1])  # sorted: seen_in searches it
    # the held-out texts of both classifiers were found in the sources and dropped
    assert m.corpus["tweets"].excluded > 0 and m.corpus["debian"].excluded > 0
    assert any("sentiment" in d for d in m.held_out_excluded) and any("topics" in d for d in m.held_out_excluded)
    assert 0 <= m.metrics["mlm_accuracy"] <= 1 and m.num_parameters > 0
    assert "never saw a validation or test text" in pretrained.summary(encoder)


@pytest.mark.parametrize("name", ["sentiment", "topics"])
def test_no_held_out_text_of_any_preset_is_in_the_corpus(encoder, data_dir, name):
    keys = pretrained.load_keys(encoder)
    for preset in ("smoke", "quick"):
        cfg = resolve_configs([name], preset)[name]
        parts = MODELS[name].split(cfg, data_dir)[0]
        assert seen_in(keys, [ex.text for ex in parts["val"] + parts["test"]]) == 0
    # and the check itself finds texts that are there
    train_texts = [ex.text for ex in parts["train"]]
    assert seen_in(np.sort(np.array([text_key(t) for t in train_texts[:50]], dtype=np.uint64)), train_texts) == 50


def test_train_fine_tunes_the_encoder_it_names(encoder, tmp_path, data_dir):
    registry = encoder.parents[2]
    rc = main(["train", "--preset", "smoke", "--models", "sentiment", "--set", "sentiment.model.pretrained=text-encoder",
               "--registry", str(registry), "--data-dir", str(data_dir), "--checkpoint-dir", str(tmp_path / "ck")])
    assert rc == 0
    version = registry / "sentiment" / latest_version(registry, "sentiment")
    manifest = Manifest.load(version / "manifest.json")
    model_cfg = manifest.training.config["model"]
    shape = pretrained.load_manifest(encoder).config["model"]
    assert model_cfg["pretrained"] == str(encoder)
    assert all(model_cfg[k] == shape[k] for k in pretrained.SHAPE_FIELDS)
    assert (version / "tokenizer.json").read_bytes() == (encoder / "tokenizer.json").read_bytes()
    card = (version / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "## Pretraining" in card and pretrained.load_manifest(encoder).version in card


def test_build_model_starts_from_the_pretrained_weights(encoder, data_dir):
    from safetensors.torch import load_file

    family = MODELS["sentiment"]
    cfg = resolve_configs(["sentiment"], "smoke", sets=[f"sentiment.model.pretrained={encoder}"])["sentiment"]
    splits = family.prepare_data(cfg, data_dir)
    model = family.build_model(cfg, splits)
    saved = load_file(str(encoder / "model.safetensors"))
    state = model.bert.state_dict()
    assert saved and all(torch.equal(state[k], v) for k, v in saved.items())


def test_an_encoder_that_saw_a_test_text_is_refused(encoder, tmp_path, data_dir, capsys):
    cfg = resolve_configs(["sentiment"], "smoke")["sentiment"]
    test_texts = [ex.text for ex in MODELS["sentiment"].split(cfg, data_dir)[0]["test"]]
    leaky = tmp_path / "leaky"
    shutil.copytree(encoder, leaky)
    # uint64 on both sides: numpy would turn uint64 + int64 into float64 and lose the hashes' low bits
    leaked = np.array([text_key(t) for t in test_texts[:3]], dtype=np.uint64)
    keys = np.concatenate([pretrained.load_keys(encoder), leaked])
    np.save(leaky / pretrained.KEYS, np.sort(keys))
    registry = tmp_path / "registry"
    rc = main(["train", "--preset", "smoke", "--models", "sentiment", "--set", f"sentiment.model.pretrained={leaky}",
               "--registry", str(registry), "--data-dir", str(data_dir), "--checkpoint-dir", str(tmp_path / "ck")])
    assert rc == 2
    assert "saw 3 text(s) of this run's test split" in capsys.readouterr().err
    assert not (registry / "sentiment").exists()


def test_train_pretrains_a_missing_encoder_first(tmp_path, data_dir, capsys):
    registry = tmp_path / "registry"
    rc = main(["train", "--preset", "smoke", "--models", "topics", "--set", "topics.model.pretrained=text-encoder",
               "--registry", str(registry), "--data-dir", str(data_dir), "--checkpoint-dir", str(tmp_path / "ck")])
    assert rc == 0
    assert pretrained.latest(registry, "text-encoder") is not None
    assert "pretraining stage" in capsys.readouterr().out
    assert [p.name for p in registry.iterdir() if not p.name.startswith(".")] == ["topics"]


def test_pack_keeps_every_token_in_order_and_cuts_long_texts():
    texts = [[10, 11, 12], [13] * 9, [14, 15]]
    seqs = pack(texts, 8, cls_id=2, sep_id=3)
    assert all(len(s) <= 8 and s[0] == 2 and s[-1] == 3 for s in seqs)
    flat = [t for s in seqs for t in s if t not in (2, 3)]
    assert flat == [t for ids in texts for t in ids]


def test_mask_batch_masks_only_real_tokens_and_every_row():
    rng = np.random.default_rng(0)
    seqs = [np.array([2] + list(rng.integers(5, 100, size=n)) + [3]) for n in rng.integers(1, 60, size=200)]
    inputs, attention, labels = mask_batch(seqs, SPECIAL, 100, 0.15, np.random.default_rng(1))
    chosen = labels != IGNORE
    assert chosen.any(1).all()  # every row predicts at least one token
    originals = np.zeros_like(inputs)
    for r, s in enumerate(seqs):
        originals[r, : len(s)] = s
    assert np.all(labels[chosen] == originals[chosen])
    assert not np.isin(originals[chosen], [0, 2, 3]).any()  # never pad, [CLS] or [SEP]
    assert np.all(inputs[~chosen] == originals[~chosen])
    rate = chosen.sum() / ((attention == 1) & ~np.isin(originals, [2, 3])).sum()
    masked = (inputs[chosen] == SPECIAL["mask"]).mean()
    assert 0.13 < rate < 0.19 and 0.75 < masked < 0.85
