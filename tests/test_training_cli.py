"""CLI behaviour: gate failure, bad data and bad config give a clear message, a non-zero exit
and nothing half-written in the registry; config overrides reach the model config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from modelkit.registry import LATEST_FILE, latest_version, list_versions
from training.cli import main, resolve_configs

ROOT = Path(__file__).resolve().parents[1]


def _registry_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) if root.exists() else []


def test_overrides_reach_the_config():
    cfgs = resolve_configs(
        ["sentiment", "topics"], "smoke", sets=["sentiment.train.epochs=3", "train.lr=0.002", "topics.model.threshold=per_label"]
    )
    from training.families.text_classifier import MODELS

    assert cfgs["sentiment"].train.epochs == 3
    assert cfgs["topics"].train.epochs == MODELS["topics"].presets()["smoke"]["train"]["epochs"] != 3
    assert cfgs["sentiment"].train.lr == cfgs["topics"].train.lr == 0.002
    assert cfgs["topics"].model.threshold == "per_label"


def test_overrides_do_not_leak_into_the_next_resolution():
    """--set edits a copy: the ViT family shares its preset dicts, which one in-process run changed for the next."""
    for name in ("fashion", "sentiment", "de-en"):
        changed = resolve_configs([name], "smoke", sets=["train.batch_size=33", "train.epochs=7"])[name].train
        fresh = resolve_configs([name], "smoke")[name].train
        assert (changed.batch_size, changed.epochs) == (33, 7) and (fresh.batch_size, fresh.epochs) != (33, 7)


def test_config_file_and_data_flag(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[sentiment.train]\nepochs = 5\n[sentiment.model]\nhidden_size = 64\n', encoding="utf-8")
    cfgs = resolve_configs(["sentiment"], "quick", config_file=str(f), data=["sentiment=my.csv"])
    assert cfgs["sentiment"].train.epochs == 5 and cfgs["sentiment"].model.hidden_size == 64
    assert cfgs["sentiment"].data.path == "my.csv"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "sentiment.train.epochs=abc"], "sentiment.train.epochs: Input should be a valid integer"),
        (["--set", "sentiment.train.epochz=2"], "sentiment.train.epochz: Extra inputs are not permitted"),
        (["--set", "sentiment.model.max_length=2"], "sentiment.model.max_length: Input should be greater than or equal to 8"),
        (["--set", "sentiment.gate.criteria=[{\"metric\": \"macro_f1\", \"min_value\": \"high\"}]"], "sentiment.gate.criteria.0.min_value"),
        (["--set", "nosuch.train.epochs=2"], "unknown model 'nosuch'"),
        (["--set", "epochs"], "expected KEY=VALUE"),
        (["--data", "other=x.csv"], "expected NAME=PATH"),
        (["--config", "/nonexistent.toml"], "config file not found"),
    ],
)
def test_bad_config_exits_2_naming_the_field(args, message, tmp_path, capsys):
    reg = tmp_path / "reg"
    rc = main(["train", "--preset", "smoke", "--models", "sentiment", "--registry", str(reg), *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err
    assert _registry_files(reg) == []


def test_unknown_model_exits_2(tmp_path, capsys):
    rc = main(["train", "--preset", "smoke", "--models", "nope", "--registry", str(tmp_path)])
    assert rc == 2 and "unknown model(s) nope" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "file not found"),
        ("", "file is empty"),
        ("text,label\ngood day,positive\n,negative\n", "bad.csv:3: empty text"),
        ("text,label\ngood day,positive\nbad day,furious\n", "bad.csv:3: unknown label 'furious'"),
    ],
)
def test_bad_data_exits_2_and_writes_nothing(content, message, tmp_path, capsys):
    path = tmp_path / "bad.csv"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    reg = tmp_path / "reg"
    rc = main(
        ["train", "--preset", "smoke", "--models", "sentiment", "--registry", str(reg), "--data", f"sentiment={path}",
         "--set", 'sentiment.data.labels=["negative","neutral","positive"]']
    )
    err = capsys.readouterr().err
    assert rc == 2 and "data error" in err and message in err and str(path) in err
    assert _registry_files(reg) == []


def test_gate_failure_exits_1_and_leaves_latest_alone(tiny_text_data, tmp_path):
    """A first good version becomes LATEST; an impossible gate publishes a FAIL version, LATEST unchanged."""
    reg = tmp_path / "reg"
    base = ["train", "--preset", "smoke", "--models", "sentiment", "--registry", str(reg),
            "--data", f"sentiment={tiny_text_data['single']}", "--set", "sentiment.export.exporters=[\"legacy\"]"]
    assert main(base) == 0
    good = latest_version(reg, "sentiment")
    gate = json.dumps([{"metric": "macro_f1", "min_value": 1.01}])
    cmd = [sys.executable, "-m", "training", *base, "--set", f"sentiment.gate.criteria={gate}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "GATE FAILED" in proc.stderr and "macro_f1" in proc.stderr and "< minimum 1.0100" in proc.stderr
    assert (reg / "sentiment" / LATEST_FILE).read_text().strip() == good
    rows = list_versions(reg)
    assert [r.gate for r in rows] == ["pass", "FAIL"] and rows[0].latest and not rows[1].latest
    assert not [p for p in (reg / "sentiment").iterdir() if p.name.startswith(".staging")]


def test_failure_mid_run_discards_staging(tiny_text_data, tmp_path, capsys):
    """A bad config value that only surfaces during training leaves no staging folder behind."""
    reg = tmp_path / "reg"
    rc = main(["train", "--preset", "smoke", "--models", "sentiment", "--registry", str(reg),
               "--data", f"sentiment={tiny_text_data['single']}", "--set", "sentiment.train.monitor=nonexistent"])
    assert rc == 2 and "sentiment.train.monitor" in capsys.readouterr().err
    assert _registry_files(reg) == []
