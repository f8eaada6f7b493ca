"""The torch-free core: manifest validation, registry publishing and drift statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from modelkit import profile, registry
from modelkit.manifest import Manifest


def _manifest(name: str = "demo", version: str = "v1", **overrides) -> Manifest:
    data = {
        "name": name,
        "version": version,
        "task": "text-classification",
        "labels": ["neg", "pos"],
        "graphs": [
            {
                "role": "model",
                "variant": "fp32",
                "path": "model.onnx",
                "opset": 17,
                "exporter": "legacy",
                "inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]}],
                "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", 2]}],
            }
        ],
        "preprocessing": {"kind": "text", "tokenizer_file": "tokenizer.json", "max_length": 16, "pad_token_id": 0},
        "postprocessing": {"activation": "softmax"},
        "metrics": {"fp32": {"accuracy": 0.9}},
        "baseline_metrics": {"tfidf_logreg": {"accuracy": 0.88}},
        "headline_metric": "accuracy",
        "gate": {"passed": True, "criteria": [{"metric": "accuracy", "min_value": 0.5}], "reasons": ["ok"]},
        "parity": [{"variant": "fp32", "n_inputs": 256, "max_abs_diff": 1e-6, "tolerance": 1e-4, "passed": True}],
        "files": [],
        "dataset": {"source": "unit", "fingerprint": "0" * 64, "split_sizes": {"train": 1}, "seed": 0},
        "training": {
            "preset": "smoke",
            "command": "test",
            "config": {},
            "duration_s": 0.0,
            "device": "cpu",
            "num_parameters": 1,
        },
        "reference_profile": {
            "n_samples": 4,
            "features": {"top_confidence": {"kind": "numeric", "edges": [0, 0.5, 1], "fractions": [0.25, 0.75]}},
        },
    }
    data.update(overrides)
    return Manifest.model_validate(data)


def _stage(root: Path, manifest: Manifest) -> Path:
    staging = registry.staging_dir(root, manifest.name)
    (staging / "model.onnx").write_bytes(b"graph bytes")
    (staging / "tokenizer.json").write_text("{}")
    return staging


def test_manifest_round_trip(tmp_path):
    m = _manifest()
    m.dump(tmp_path / "manifest.json")
    again = Manifest.load(tmp_path / "manifest.json")
    assert again == m
    assert again.graph("model").path == "model.onnx"
    with pytest.raises(KeyError, match="variant=int8"):
        again.graph("model", "int8")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"schema_version": 99}, "schema_version 99"),
        ({"labels": []}, "needs labels"),
        ({"task": "multi-label-classification"}, "sigmoid"),
        ({"task": "translation"}, "generation"),
        ({"unexpected": 1}, "Extra inputs"),
    ],
)
def test_manifest_rejects_inconsistent_fields(overrides, message):
    with pytest.raises(ValidationError, match=message):
        _manifest(**overrides)


def test_histogram_shape_is_checked():
    with pytest.raises(ValidationError, match="len\\(edges\\)"):
        _manifest(reference_profile={"n_samples": 1, "features": {"x": {"kind": "numeric", "edges": [0, 1], "fractions": [0.5, 0.5]}}})


def test_publish_is_atomic_and_never_overwrites(tmp_path):
    m = _manifest()
    final = registry.publish(tmp_path, _stage(tmp_path, m), m)
    assert registry.latest_version(tmp_path, "demo") == "v1"
    assert not list((tmp_path / "demo").glob(".staging-*"))
    loaded, vdir = registry.load_version(tmp_path, "demo")
    assert vdir == final and {f.path for f in loaded.files} == {"model.onnx", "tokenizer.json"}
    with pytest.raises(registry.RegistryError, match="never overwritten"):
        registry.publish(tmp_path, _stage(tmp_path, m), m)


def test_failed_gate_keeps_version_but_not_latest(tmp_path):
    good = _manifest(version="v1")
    registry.publish(tmp_path, _stage(tmp_path, good), good)
    bad = _manifest(version="v2")
    registry.publish(tmp_path, _stage(tmp_path, bad), bad, servable=False)
    assert registry.latest_version(tmp_path, "demo") == "v1"
    assert [(r.version, r.latest) for r in registry.list_versions(tmp_path)] == [("v1", True), ("v2", False)]


def test_verify_detects_altered_and_missing_files(tmp_path):
    m = _manifest()
    vdir = registry.publish(tmp_path, _stage(tmp_path, m), m)
    (vdir / "model.onnx").write_bytes(b"graph bytez")  # same size, different content
    with pytest.raises(registry.RegistryError, match="checksum mismatch for model.onnx"):
        registry.load_version(tmp_path, "demo")
    (vdir / "model.onnx").unlink()
    with pytest.raises(registry.RegistryError, match="file missing: model.onnx"):
        registry.load_version(tmp_path, "demo")


def test_invalid_manifest_is_a_registry_error(tmp_path):
    m = _manifest()
    vdir = registry.publish(tmp_path, _stage(tmp_path, m), m)
    data = json.loads((vdir / "manifest.json").read_text())
    data["task"] = "regression"
    (vdir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(registry.RegistryError, match="invalid manifest"):
        registry.load_version(tmp_path, "demo")


def test_numeric_histogram_and_open_ended_bins():
    rng = np.random.default_rng(0)
    ref = profile.numeric_histogram(rng.normal(size=5000), bins=10)
    assert len(ref.fractions) == 10 and abs(sum(ref.fractions) - 1) < 1e-9
    # values far outside the reference range land in the outer bins, not nowhere
    assert profile.bin_index(-100.0, ref) == 0 and profile.bin_index(100.0, ref) == 9
    same = profile.live_fractions(rng.normal(size=5000), ref)
    shifted = profile.live_fractions(rng.normal(loc=1.5, size=5000), ref)
    assert profile.psi(ref.fractions, same) < 0.05
    assert profile.psi(ref.fractions, shifted) > 0.5
    assert profile.js_divergence(ref.fractions, same) < profile.js_divergence(ref.fractions, shifted)


def test_categorical_histogram_ignores_unknown_live_values():
    ref = profile.categorical_histogram(["a", "a", "b", "c"], ["a", "b", "c"])
    assert ref.fractions == [0.5, 0.25, 0.25]
    assert profile.bin_index("zzz", ref) == -1
    assert profile.live_fractions(["a", "b", "zzz"], ref).tolist() == [0.5, 0.5, 0.0]
