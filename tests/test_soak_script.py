"""benchmarks/soak.py end to end, CI-sized: 30 s at 16 clients on a smoke model (the 10-minute run is in
benchmarks/RESULTS.md). Checks the script, its sampling and its report; zero errors are required,
flatness over 30 s is printed, not judged (warm-up dominates so short a run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from service_support import ROOT, names_by_task, smoke_models  # noqa: F401 (fixture)


def test_soak_script_runs_and_reports_memory_descriptors_and_p99(smoke_models, tmp_path):
    model = names_by_task(smoke_models)["text-classification"]
    out = tmp_path / "soak.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--registry", str(smoke_models),
                          "--model", model, "--minutes", "0.5", "--window", "5", "--sample", "1", "--warmup", "2",
                          "--no-write", "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    windows = report["windows"]
    assert len(windows) >= 5, windows
    assert all(w["answers"] > 0 and w["rss_mb"] > 50 and w["fds"] > 10 and w["p99_ms"] > 0 for w in windows)
    verdict = report["verdict"]
    assert verdict["errors"] == 0 and verdict["answers"] == sum(w["answers"] for w in windows)
    print(f"\n{verdict}")
    assert "| t (s) | requests/s |" in run.stdout and "RSS spread" in run.stdout
