"""`bentoml build` from bentofile.yaml: the Bento holds the serving code and only serve packages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy" / "scripts"))
from serve_requirements import requirement_name  # noqa: E402

TRAINING_ONLY = {"torch", "transformers", "onnx", "onnxscript", "scikit-learn", "sacrebleu", "matplotlib", "tqdm-torch"}


def test_bentoml_build_packs_serving_code_and_serve_dependencies_only(tmp_path):
    home = tmp_path / "bentoml_home"  # BentoML's store stays outside the repository
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    result = subprocess.run(
        [Path(sys.executable).parent / "bentoml", "build", "-f", "bentofile.yaml", "--output", "tag", "."],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (bento_dir,) = [p for p in (home / "bentos" / "modelserve").iterdir() if p.name != "latest"]

    info = yaml.safe_load((bento_dir / "bento.yaml").read_text())
    assert info["service"] == "service.app:ModelService"

    requirements = (bento_dir / "env/python/requirements.txt").read_text().splitlines()
    names = {requirement_name(r) for r in requirements if r.strip() and not r.startswith(("#", "-"))}
    lock = (ROOT / "deploy/requirements/serve-cpu.lock").read_text().splitlines()
    locked = {requirement_name(r) for r in lock if r and not r.startswith("#")}
    assert {"bentoml", "onnxruntime", "prometheus-client"} <= names
    assert names <= locked, f"not in the serve lock: {names - locked}"
    assert not names & TRAINING_ONLY, names & TRAINING_ONLY
    assert all("==" in r for r in requirements if r.strip() and not r.startswith(("#", "-")))

    src = bento_dir / "src"
    assert (src / "service/app.py").is_file() and (src / "modelkit/manifest.py").is_file()
    assert (src / "monitoring/metrics.py").is_file()
    top_level = {p.name for p in src.iterdir()}
    assert top_level <= {"service", "modelkit", "monitoring", "exported", "bentofile.yaml"}, top_level
    assert not list(src.rglob("__pycache__"))
    packed_code = "\n".join(p.read_text(errors="ignore") for p in src.rglob("*.py"))
    assert "import torch" not in packed_code and "from torch" not in packed_code
