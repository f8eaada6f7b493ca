"""Every model in the smoke registry: manifest round trip, checksums, graphs load, listing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

from modelkit.manifest import Manifest
from modelkit.registry import RegistryError, list_versions, load_version, model_names, verify_files

ROOT = Path(__file__).resolve().parents[1]


def test_every_registered_model_round_trips(smoke_registry):
    names = model_names(smoke_registry)
    assert {"sentiment", "topics"} <= set(names)
    for name in names:
        manifest, vdir = load_version(smoke_registry, name)  # validates and verifies checksums
        again = Manifest.model_validate_json(manifest.model_dump_json())
        assert again == manifest
        assert manifest.gate.passed and manifest.reference_profile.features
        assert manifest.dataset.fingerprint and sum(manifest.dataset.split_sizes.values()) > 0
        assert {"fp32", "int8"} <= set(manifest.metrics), name
        fp32 = next(p for p in manifest.parity if p.variant == "fp32")
        assert fp32.passed and fp32.max_abs_diff <= 1e-4
        for graph in manifest.graphs:
            assert graph.opset >= 17
            session = ort.InferenceSession(str(vdir / graph.path), providers=["CPUExecutionProvider"])
            assert [i.name for i in session.get_inputs()] == [t.name for t in graph.inputs]
        for f in ("MODEL_CARD.md", "train_log.jsonl", "plots/curves.png"):
            assert (vdir / f).is_file(), f"{name}: {f} missing"
        assert not list(vdir.parent.glob(".staging-*"))


def test_text_manifests_describe_preprocessing(smoke_registry):
    for name, activation in (("sentiment", "softmax"), ("topics", "sigmoid")):
        m, vdir = load_version(smoke_registry, name)
        assert m.postprocessing.activation == activation
        assert (vdir / m.preprocessing.tokenizer_file).is_file()
        assert {"token_count", "unknown_token_rate", "predicted_class", "top_confidence"} <= set(m.reference_profile.features)
    topics, _ = load_version(smoke_registry, "topics")
    assert "labels_per_item" in topics.reference_profile.features
    assert {"micro_f1", "macro_f1", "subset_accuracy", "hamming_loss"} <= set(topics.metrics["fp32"])
    assert "agreement_vs_fp32" in topics.metrics["int8"]


def test_altered_file_is_detected(smoke_registry, tmp_path):
    import shutil

    manifest, vdir = load_version(smoke_registry, "sentiment")
    copy = tmp_path / "v"
    shutil.copytree(vdir, copy)
    with open(copy / "tokenizer.json", "a", encoding="utf-8") as f:
        f.write(" ")
    with pytest.raises(RegistryError, match="tokenizer.json"):
        verify_files(manifest, copy)


def test_models_command_lists_the_registry(smoke_registry):
    proc = subprocess.run(
        [sys.executable, "-m", "training", "models", "--registry", str(smoke_registry)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    header = proc.stdout.splitlines()[0].split()
    assert header == ["name", "version", "task", "metric", "value", "baseline", "gate", "size", "created"]
    for row in list_versions(smoke_registry):
        line = next(line for line in proc.stdout.splitlines() if line.startswith(row.name + " "))
        assert row.version in line and row.task in line and row.metric in line and "pass" in line
