"""A training process keeps its onnxruntime sessions (export parity, latency, evaluation) to ``train.threads``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def test_export_and_evaluation_sessions_use_the_models_threads(tmp_path, monkeypatch):
    pytest.importorskip("torch", reason="training extras not installed")
    import training.export
    import training.pipeline
    from training.cli import main

    opened: list[tuple[str, int]] = []  # (where, intra_op_threads)
    open_session, create_runtime = training.export.open_session, training.pipeline.create_runtime

    def recording_open(path, settings):
        opened.append(("export", settings.intra_op_threads))
        return open_session(path, settings)

    def recording_runtime(manifest, version_dir, settings):
        opened.append((f"evaluate {settings.variant}", settings.intra_op_threads))
        return create_runtime(manifest, version_dir, settings)

    monkeypatch.setattr(training.export, "open_session", recording_open)
    monkeypatch.setattr(training.pipeline, "create_runtime", recording_runtime)
    data_dir = Path(os.environ.get("SMOKE_DATA_DIR", tmp_path / "data"))
    rc = main(["train", "--preset", "smoke", "--models", "sentiment", "--registry", str(tmp_path / "reg"),
               "--data-dir", str(data_dir), "--set", "train.threads=1", "--set", "train.progress=false"])
    assert rc == 0
    places = {where for where, _ in opened}
    assert {"export", "evaluate fp32", "evaluate int8"} <= places, places
    assert all(threads == 1 for _, threads in opened), opened
