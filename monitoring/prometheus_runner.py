"""Run the real Prometheus binary on 127.0.0.1 with this repo's rules, and query it.

Used by the tests and ``monitoring/drift_replay.py``: the config is
``monitoring/prometheus/prometheus.yml`` with its targets and intervals replaced, so the rules
under test are the ones the compose stack loads.
"""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from modelkit.readiness import wait_until_ready

PROMETHEUS_DIR = Path(__file__).resolve().parent / "prometheus"


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bound to 0, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prometheus_binary() -> str:
    path = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(path).exists():
        raise FileNotFoundError("prometheus binary not found: apt-get install prometheus (scripts/setup.sh does)")
    return path


def render_config(targets: list[str], *, scrape_interval: str = "1s", evaluation_interval: str = "1s") -> dict:
    """The stack's prometheus.yml with the modelserve job pointed at ``targets``."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval=scrape_interval, evaluation_interval=evaluation_interval)
    config["scrape_configs"] = [job for job in config["scrape_configs"] if job["job_name"] == "modelserve"]
    config["scrape_configs"][0]["static_configs"] = [{"targets": targets}]
    return config


class Prometheus:
    """A Prometheus process with temp storage; use as a context manager."""

    def __init__(self, targets: list[str], *, scrape_interval: str = "1s", evaluation_interval: str = "1s"):
        self.targets = targets
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._dir: tempfile.TemporaryDirectory | None = None
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> "Prometheus":
        self._dir = tempfile.TemporaryDirectory(prefix="prometheus-")
        work = Path(self._dir.name)
        for rules in ("recording.yml", "alerts.yml"):
            shutil.copy(PROMETHEUS_DIR / rules, work / rules)
        config = render_config(self.targets, scrape_interval=self.scrape_interval,
                               evaluation_interval=self.evaluation_interval)
        (work / "prometheus.yml").write_text(yaml.safe_dump(config))
        self._log = open(work / "prometheus.log", "wb")
        self._proc = subprocess.Popen(
            [prometheus_binary(), f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle", "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        wait_until_ready(f"{self.url}/-/ready", self._proc, timeout=30, name="prometheus", log=self.log, poll_s=0.1)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if getattr(self, "_log", None):
            self._log.close()
        if self._dir is not None:
            self._dir.cleanup()

    def log(self) -> str:
        if self._dir is None:
            return ""
        path = Path(self._dir.name) / "prometheus.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def _get(self, path: str, **params: Any) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """Instant vector result: [{"metric": {...}, "value": [ts, "v"]}, ...]."""
        data = self._get("/api/v1/query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def values(self, expr: str) -> dict[tuple, float]:
        """Instant query as {sorted label items: float value}, non-finite values dropped."""
        out = {}
        for r in self.query(expr):
            v = float(r["value"][1])
            if math.isfinite(v):
                out[tuple(sorted(r["metric"].items()))] = v
        return out

    def targets_health(self) -> list[str]:
        return [t["health"] for t in self._get("/api/v1/targets")["activeTargets"]]

    def rule_groups(self) -> list[dict]:
        return self._get("/api/v1/rules")["groups"]

    def wait_for(self, expr: str, predicate=lambda vals: bool(vals), timeout: float = 30.0) -> dict[tuple, float]:
        """Poll ``expr`` until ``predicate(values)`` holds; the last values on success, TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        vals: dict[tuple, float] = {}
        while time.monotonic() < deadline:
            vals = self.values(expr)
            if predicate(vals):
                return vals
            time.sleep(0.5)
        raise TimeoutError(f"{expr!r} did not satisfy the condition in {timeout}s; last: {vals}")
