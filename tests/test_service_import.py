"""The serving side never imports torch or transformers, and its dependencies do not include them."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_importing_the_service_leaves_torch_out():
    code = (
        "import sys, service.app, service.front, service.doors.oip_grpc, service.dataplane, monitoring.metrics\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_serve_dependencies_exclude_torch():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["serve"]
    names = {d.split("==")[0].split("[")[0].strip().lower() for d in deps}
    assert not names & {"torch", "transformers", "onnxscript"}, names
