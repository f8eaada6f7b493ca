"""Promote / rollback / history: LATEST moves atomically, every move is recorded, gate-failed
or unknown versions are refused with a message naming what exists. Torch-free."""

from __future__ import annotations

import json
import multiprocessing
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from modelkit import registry
from modelkit.manifest import Manifest
from training.cli import main

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _manifest(name: str, version: str, *, passed: bool = True, minutes: int = 0) -> Manifest:
    return Manifest.model_validate({
        "name": name, "version": version, "task": "text-classification", "labels": ["neg", "pos"],
        "created_at": (T0 + timedelta(minutes=minutes)).isoformat(),
        "graphs": [{"role": "model", "variant": "fp32", "path": "model.onnx", "opset": 17, "exporter": "legacy",
                    "inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]}],
                    "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", 2]}]}],
        "preprocessing": {"kind": "text", "tokenizer_file": "tokenizer.json", "max_length": 16, "pad_token_id": 0},
        "postprocessing": {"activation": "softmax"},
        "metrics": {"fp32": {"accuracy": 0.9}}, "baseline_metrics": {}, "headline_metric": "accuracy",
        "gate": {"passed": passed, "criteria": [{"metric": "accuracy", "min_value": 0.5}],
                 "reasons": ["PASS: accuracy ok" if passed else "FAIL: accuracy 0.4000 < minimum 0.5000"]},
        "parity": [], "files": [],
        "dataset": {"source": "unit", "fingerprint": "0" * 64, "split_sizes": {"train": 1}, "seed": 0},
        "training": {"preset": "smoke", "command": "test", "config": {}, "duration_s": 0.0, "device": "cpu",
                     "num_parameters": 1},
        "reference_profile": {"n_samples": 1, "features": {}},
    })


def _publish(root: Path, name: str, version: str, *, passed: bool = True, minutes: int = 0) -> Path:
    m = _manifest(name, version, passed=passed, minutes=minutes)
    staging = registry.staging_dir(root, name)
    (staging / "model.onnx").write_bytes(b"graph " + version.encode())
    return registry.publish(root, staging, m, servable=passed)


@pytest.fixture
def reg(tmp_path, monkeypatch) -> Path:
    """v1, v2, v3 published (LATEST v3), v2b failed its gate (between v2 and v3)."""
    monkeypatch.setenv("MODELSERVE_USER", "tester")
    _publish(tmp_path, "m", "v1", minutes=1)
    _publish(tmp_path, "m", "v2", minutes=2)
    _publish(tmp_path, "m", "v2b", passed=False, minutes=3)
    _publish(tmp_path, "m", "v3", minutes=4)
    return tmp_path


def _history(root: Path, name: str = "m") -> list[tuple]:
    return [(r.action, r.from_version, r.to_version) for r in registry.read_history(root, name)]


def test_publish_records_each_latest_move(reg):
    assert registry.latest_version(reg, "m") == "v3"
    assert _history(reg) == [("publish", None, "v1"), ("publish", "v1", "v2"), ("publish", "v2", "v3")]
    lines = (reg / "m" / registry.HISTORY_FILE).read_text().splitlines()
    first = json.loads(lines[0])
    assert set(first) == {"when", "who", "action", "name", "from", "to", "why"}
    assert first["who"] == "tester" and first["name"] == "m" and first["from"] is None
    assert datetime.fromisoformat(first["when"]).utcoffset() == timedelta(0)
    assert not list((reg / "m").glob(".LATEST*")), "temp file left behind"


def test_promote_moves_latest_and_records_who_when_why(reg, capsys):
    before = datetime.now(timezone.utc).replace(microsecond=0)
    rc = main(["promote", "m", "v1", "--why", "v3 worse on new data", "--who", "alice", "--registry", str(reg)])
    assert rc == 0, capsys.readouterr().err
    assert "LATEST v3 -> v1" in capsys.readouterr().out
    assert registry.latest_version(reg, "m") == "v1"
    last = registry.read_history(reg, "m")[-1]
    assert (last.action, last.from_version, last.to_version, last.who, last.why) == (
        "promote", "v3", "v1", "alice", "v3 worse on new data")
    assert before <= last.when <= datetime.now(timezone.utc)
    # promoting the current LATEST changes nothing and records nothing
    assert registry.promote(reg, "m", "v1") is None
    assert len(registry.read_history(reg, "m")) == 4


def test_gate_failed_version_is_refused_with_exit_1(reg, capsys):
    history = (reg / "m" / registry.HISTORY_FILE).read_bytes()
    with pytest.raises(registry.GateRefused, match="failed its gate"):
        registry.promote(reg, "m", "v2b")
    rc = main(["promote", "m", "v2b", "--registry", str(reg)])
    err = capsys.readouterr().err
    assert rc == 1 and "m/v2b failed its gate" in err and "accuracy 0.4000 < minimum" in err
    assert registry.latest_version(reg, "m") == "v3"
    assert (reg / "m" / registry.HISTORY_FILE).read_bytes() == history


@pytest.mark.parametrize("args, message", [
    (["promote", "nope", "v1"], "unknown model 'nope' in"),
    (["promote", "m", "v9"], "m: unknown version 'v9'; versions: v1, v2, v2b, v3"),
    (["rollback", "nope"], "models: m"),
    (["history", "nope"], "unknown model 'nope'"),
])
def test_unknown_name_or_version_exits_2_naming_what_exists(reg, capsys, args, message):
    rc = main([*args, "--registry", str(reg)])
    assert rc == 2 and message in capsys.readouterr().err
    assert registry.latest_version(reg, "m") == "v3"


def test_altered_version_cannot_be_promoted(reg):
    (reg / "m" / "v1" / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(registry.RegistryError, match="model.onnx"):
        registry.promote(reg, "m", "v1")
    assert registry.latest_version(reg, "m") == "v3"


def test_rollback_walks_back_through_history_not_back_and_forth(reg, capsys):
    assert main(["rollback", "m", "--why", "p99 doubled", "--registry", str(reg)]) == 0
    assert "LATEST v3 -> v2" in capsys.readouterr().out
    assert registry.latest_version(reg, "m") == "v2"
    record, how = registry.rollback(reg, "m")
    assert (record.from_version, record.to_version) == ("v2", "v1") and how.startswith("history")
    rc = main(["rollback", "m", "--registry", str(reg)])
    assert rc == 2 and "no earlier gate-passing version" in capsys.readouterr().err
    assert registry.latest_version(reg, "m") == "v1"
    assert _history(reg)[-2:] == [("rollback", "v3", "v2"), ("rollback", "v2", "v1")]


def test_rollback_after_promote_returns_to_the_previous_latest(reg):
    registry.promote(reg, "m", "v1")  # v3 -> v1: v1 is the oldest, so only the history knows v3
    record, how = registry.rollback(reg, "m")
    assert record.to_version == "v3" and "history" in how


def test_rollback_without_history_takes_newest_passing_older_version(reg):
    (reg / "m" / registry.HISTORY_FILE).unlink()
    record, how = registry.rollback(reg, "m")  # skips v2b (gate failed)
    assert record.to_version == "v2" and "newest gate-passing version older than v3" in how


def test_rollback_skips_history_versions_no_longer_servable(reg):
    (reg / "m" / "v2" / "model.onnx").write_bytes(b"tampered")
    record, _ = registry.rollback(reg, "m")
    assert record.to_version == "v1"


def test_latest_moved_outside_history_falls_back(reg):
    registry.set_latest(reg, "m", "v2")  # e.g. someone edited LATEST by hand
    record, how = registry.rollback(reg, "m")
    assert record.to_version == "v1" and "no usable history" in how


def test_failed_replace_leaves_latest_and_history_untouched(reg, monkeypatch):
    history = (reg / "m" / registry.HISTORY_FILE).read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(registry.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        registry.promote(reg, "m", "v1")
    assert registry.latest_version(reg, "m") == "v3"
    assert (reg / "m" / registry.HISTORY_FILE).read_bytes() == history
    assert sorted(p.name for p in (reg / "m").iterdir() if p.is_file()) == [
        ".lock", registry.HISTORY_FILE, registry.LATEST_FILE]


def _promote_many(root: str, versions: list[str], n: int) -> None:
    for i in range(n):
        registry.promote(Path(root), "m", versions[i % len(versions)], who=f"p{os.getpid()}")


def test_concurrent_promotes_keep_latest_and_history_consistent(reg):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_promote_many, args=(str(reg), order, 15))
             for order in (["v1", "v2"], ["v2", "v3"], ["v3", "v1"], ["v1", "v3"])]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    history = registry.read_history(reg, "m")
    assert len(history) > 10
    for before, after in zip(history, history[1:]):
        assert after.from_version == before.to_version, "a LATEST move was lost or interleaved"
    assert history[-1].to_version == registry.latest_version(reg, "m")


def test_torn_last_line_is_ignored_other_bad_lines_are_errors(reg):
    path = reg / "m" / registry.HISTORY_FILE
    with open(path, "a") as f:
        f.write('{"when": "2026-01-01T00:0')  # a writer died mid-append
    assert len(registry.read_history(reg, "m")) == 3
    path.write_text(path.read_text().replace('"action": "publish"', '"action": "nonsense"', 1) + "\n")
    with pytest.raises(registry.RegistryError, match=r"HISTORY.jsonl:1: invalid history record"):
        registry.read_history(reg, "m")


def test_models_and_history_commands_show_the_history(reg, capsys):
    registry.promote(reg, "m", "v1", why="rollout test", who="bob")
    assert main(["models", "--registry", str(reg)]) == 0
    out = capsys.readouterr().out
    assert "m: 4 LATEST move(s); last:" in out and "promote v3 -> v1 by bob: rollout test" in out
    assert main(["history", "m", "--limit", "2", "--json", "--registry", str(reg)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["from"], r["to"]) for r in lines] == [("v2", "v3"), ("v3", "v1")]


def test_rollback_returns_to_a_latest_set_before_the_history_existed(tmp_path):
    """LATEST written by hand (or by code older than the history); one promote; rollback goes back to it."""
    root = tmp_path / "reg"
    _publish(root, "m", "v1", passed=False)  # published without moving LATEST ...
    _publish(root, "m", "v2", passed=False)
    for version in ("v1", "v2"):  # ... then made servable by hand, same creation time: only the history can tell
        manifest = registry.load_version(root, "m", version, verify=False)[0]
        manifest.gate.passed = True
        manifest.dump(root / "m" / version / "manifest.json")
    (root / "m" / "LATEST").write_text("v1\n")
    registry.promote(root, "m", "v2", why="t")
    record, how = registry.rollback(root, "m", why="t")
    assert (record.from_version, record.to_version) == ("v2", "v1") and how.startswith("history"), how
