"""Fixtures for continuous decoding tests: a registry whose translators have the decoder_step graph.

``SERVICE_TEST_REGISTRY`` (or the session's smoke registry) is used when its de-en version has
``decoder_step``; a registry built before that graph existed gets its translators retrained with
the smoke preset (about 15 s) into a temporary registry, beside a copy of its other models.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from service_support import copy_model


def has_step_graph(registry: Path, name: str = "de-en") -> bool:
    latest = registry / name / "LATEST"
    if not latest.is_file():
        return False
    manifest = json.loads((registry / name / latest.read_text().strip() / "manifest.json").read_text())
    return any(g["role"] == "decoder_step" for g in manifest["graphs"])


@pytest.fixture(scope="session")
def step_registry(request, tmp_path_factory) -> Path:
    prebuilt = os.environ.get("SERVICE_TEST_REGISTRY")
    root = Path(prebuilt) if prebuilt else request.getfixturevalue("smoke_registry")
    if has_step_graph(root):
        return root
    pytest.importorskip("torch", reason="training extras not installed")
    from training.cli import main

    out = tmp_path_factory.mktemp("step-registry")
    data_dir = Path(os.environ.get("SMOKE_DATA_DIR", tmp_path_factory.mktemp("smoke-data")))
    rc = main(["train", "--preset", "smoke", "--models", "de-en,en-ko", "--registry", str(out), "--data-dir",
               str(data_dir)])
    assert rc == 0, f"smoke translator training failed with exit code {rc}"
    for latest in root.glob("*/LATEST"):
        if not (out / latest.parent.name).exists():
            copy_model(root, latest.parent.name, out)
    return out


def without_step_graph(registry: Path, name: str, dst_root: Path, new_name: str) -> Path:
    """A copy of ``name`` as a version exported before decoder_step existed (graphs and files dropped)."""
    vdir = copy_model(registry, name, dst_root, new_name)
    mpath = vdir / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["graphs"] = [g for g in manifest["graphs"] if g["role"] != "decoder_step"]
    manifest["files"] = [f for f in manifest["files"] if not f["path"].startswith("decoder_step")]
    mpath.write_text(json.dumps(manifest, indent=2))
    for f in vdir.glob("decoder_step*"):
        f.unlink()
    return vdir


def registry_with(step_root: Path, dst: Path, names: list[str]) -> Path:
    """A registry holding ``names`` copied from ``step_root``."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        if (dst / name).exists():
            shutil.rmtree(dst / name)
        copy_model(step_root, name, dst)
    return dst
