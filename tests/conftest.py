"""Shared fixtures.

``smoke_registry``: every registered model family trained once per test session with the
``smoke`` preset into a temporary registry (real data, tiny subsets, real ONNX export).
Service, monitoring and deploy tests load models from it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _smoke_models() -> list[str]:
    from training.families import available_models

    return list(available_models())


@pytest.fixture(scope="session", autouse=True)
def _checkpoints_in_tmp(tmp_path_factory):
    """Training runs in the tests keep their checkpoints in a temporary folder, not ./checkpoints."""
    os.environ.setdefault("TRAINING_CHECKPOINT_DIR", str(tmp_path_factory.mktemp("checkpoints")))


@pytest.fixture(scope="session")
def smoke_registry(tmp_path_factory) -> Path:
    """Path of a registry holding one gate-passing smoke version of every registered model."""
    pytest.importorskip("torch", reason="training extras not installed")
    from training.cli import main

    root = tmp_path_factory.mktemp("smoke-registry")
    data_dir = Path(os.environ.get("SMOKE_DATA_DIR", tmp_path_factory.mktemp("smoke-data")))
    models = _smoke_models()
    rc = main(
        ["train", "--preset", "smoke", "--models", ",".join(models), "--registry", str(root), "--data-dir", str(data_dir)]
    )
    assert rc == 0, f"smoke training failed with exit code {rc}"
    return root


@pytest.fixture(scope="session")
def tiny_text_data(tmp_path_factory) -> dict[str, Path]:
    """Small synthetic CSV/JSONL files (single- and multi-label) with learnable word cues."""
    import json
    import random

    folder = tmp_path_factory.mktemp("tiny-text")
    rng = random.Random(0)
    cues = {"pos": ["great", "love", "excellent", "happy"], "neg": ["awful", "hate", "terrible", "sad"],
            "neu": ["today", "table", "report", "monday"]}
    filler = "the a car road city phone street window morning paper".split()
    rows = []
    for i in range(240):
        label = ["pos", "neg", "neu"][i % 3]
        words = rng.sample(filler, 4) + rng.sample(cues[label], 2) + [f"w{i}"]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    single = folder / "single.csv"
    single.write_text("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in rows), encoding="utf-8")
    multi = folder / "multi.jsonl"
    with open(multi, "w", encoding="utf-8") as f:
        for i, (t, lab) in enumerate(rows):
            labels = [lab] + (["num"] if i % 4 == 0 else [])
            f.write(json.dumps({"text": t + (" number" if i % 4 == 0 else ""), "labels": labels}) + "\n")
    return {"single": single, "multi": multi}
