"""Data preparation: user files, bad-data errors, dedup, seeded leak-free splits, fingerprints."""

from __future__ import annotations

import json

import pytest

from training.config import validate_config
from training.data.common import (
    Example,
    deduplicate,
    fingerprint,
    normalize_key,
    read_labelled_file,
    split_examples,
)
from training.data.text import clean_tweet, parse_dumpavail
from training.family import DataError
from training.families.text_classifier import MODELS, TextClassifierConfig


def _smoke_cfg(name: str, **data) -> TextClassifierConfig:
    raw = MODELS[name].presets()["smoke"]
    raw["data"] = {**raw.get("data", {}), **data}
    return validate_config(name, TextClassifierConfig, raw)


def test_reads_csv_and_jsonl(tiny_text_data):
    single = read_labelled_file(tiny_text_data["single"], multi_label=False)
    multi = read_labelled_file(tiny_text_data["multi"], multi_label=True)
    assert len(single) == 240 and single[0].labels in {("pos",), ("neg",), ("neu",)}
    assert multi[0].labels == ("pos", "num") or "num" in multi[0].labels
    assert single[0].where.endswith(":2")  # line numbers count the header


@pytest.mark.parametrize(
    "content, suffix, message",
    [
        (None, ".csv", "file not found"),
        ("", ".csv", "file is empty"),
        ("text,label\nfine text,pos\n   ,neg\n", ".csv", ":3: empty text"),
        ("text,label\nfine text,\n", ".csv", ":2: empty label"),
        ("words,tag\nx,y\n", ".csv", "header must name columns"),
        ('{"text": "ok", "label": "a"}\n{not json\n', ".jsonl", ":2: invalid JSON"),
        ('{"text": "", "label": "a"}\n', ".jsonl", ":1: empty text"),
        ("text,label\n", ".csv", "no examples"),
        ("a,b\n", ".txt", "unsupported file type"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path, content, suffix, message):
    path = tmp_path / f"data{suffix}"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message) as err:
        read_labelled_file(path, multi_label=False)
    assert str(path) in str(err.value)


def test_unknown_label_is_reported_with_its_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nhello there,negative\nhi,happy\n", encoding="utf-8")
    cfg = _smoke_cfg("sentiment", path=str(path), labels=["negative", "positive"])
    with pytest.raises(DataError, match=r"d\.csv:3: unknown label 'happy'"):
        MODELS["sentiment"].prepare_data(cfg, tmp_path)


def test_dedup_and_splits_have_no_shared_text():
    texts = [f"Sentence number {i % 150}" for i in range(300)]  # every text twice
    texts += [f"  sentence NUMBER {i}  " for i in range(20)]  # case/space variants of the same texts
    examples = [Example(t, (["a", "b", "c"][i % 3],), f"f:{i}") for i, t in enumerate(texts)]
    unique = deduplicate(examples, multi_label=False)
    assert len(unique) == 150
    parts = split_examples(unique, val_fraction=0.1, test_fraction=0.1, seed=3, stratify=True)
    keys = {name: {normalize_key(e.text) for e in exs} for name, exs in parts.items()}
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"] and not keys["val"] & keys["test"]
    assert sum(len(v) for v in parts.values()) == 150
    again = split_examples(unique, val_fraction=0.1, test_fraction=0.1, seed=3, stratify=True)
    assert fingerprint(parts) == fingerprint(again)
    other = split_examples(unique, val_fraction=0.1, test_fraction=0.1, seed=4, stratify=True)
    assert fingerprint(parts) != fingerprint(other)


def test_multi_label_dedup_unions_labels():
    exs = [Example("Same text", ("x",), "f:1"), Example("same  text", ("y",), "f:2")]
    assert deduplicate(exs, multi_label=True)[0].labels == ("x", "y")


def test_sentiment_prepare_is_deterministic_and_leak_free(tmp_path):
    fam = MODELS["sentiment"]
    cfg = _smoke_cfg("sentiment")
    a = fam.prepare_data(cfg, tmp_path)
    b = fam.prepare_data(cfg, tmp_path)
    assert a.dataset.fingerprint == b.dataset.fingerprint and len(a.dataset.fingerprint) == 64
    assert a.labels == ["negative", "neutral", "positive"]
    assert sum(a.dataset.split_sizes.values()) == cfg.data.max_examples
    seen = [{normalize_key(t) for t in s.x} for s in (a.train, a.val, a.test)]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])


def test_user_multilabel_data(tiny_text_data, tmp_path):
    fam = MODELS["topics"]
    cfg = _smoke_cfg("topics", path=str(tiny_text_data["multi"]))
    splits = fam.prepare_data(cfg, tmp_path)
    assert splits.labels == ["neg", "neu", "num", "pos"]
    assert splits.train.y.shape == (len(splits.train), 4)
    assert splits.dataset.source.startswith("user file")


def test_clean_tweet_strips_mojibake_and_drops_garbage():
    assert clean_tweet("I don\u00d5\u00a2_\u008a\u00ce_\u0086\u00a2t want either!") == "I don t want either!"
    assert clean_tweet("\u00d5\u00a2_\u008a\u00ce\u00eb\u009d\u00d5\u008d\u0081\u00f4 ok") is None


def test_parse_dumpavail_reads_tags_and_continuations():
    text = (
        "Package: foo\nDescription: A tool for foo\nTag: devel::lang:python, role::program,\n use::editing\n\n"
        "Package: bar\nDescription: no tags here\n\n"
    )
    assert parse_dumpavail(text) == [
        {"package": "foo", "text": "A tool for foo", "tags": ["devel::lang:python", "role::program", "use::editing"]}
    ]


def test_topics_snapshot_has_checksum(tmp_path):
    fam = MODELS["topics"]
    splits = fam.prepare_data(_smoke_cfg("topics"), tmp_path)
    snap = tmp_path / "topics" / "debtags.jsonl"
    digest = (tmp_path / "topics" / "debtags.jsonl.sha256").read_text().split()[0]
    import hashlib

    assert hashlib.sha256(snap.read_bytes()).hexdigest() == digest
    assert 2 <= len(splits.labels) <= 100
    assert json.loads(snap.read_text().splitlines()[0])["tags"]
    assert splits.train.y.sum(axis=1).min() >= 1  # every example has at least one kept tag
