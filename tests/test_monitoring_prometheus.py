"""Prometheus config and rules: promtool checks and unit tests, and the real Prometheus evaluating
every recording rule on metrics written by two worker processes through monitoring.metrics."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from modelkit import profile
from monitoring import drift
from monitoring.prometheus_runner import PROMETHEUS_DIR, Prometheus, free_port

ROOT = Path(__file__).resolve().parents[1]
PROMTOOL = "promtool"


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=ROOT)


def test_promtool_check_config_and_rules():
    r = promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
    r = promtool("check", "rules", str(PROMETHEUS_DIR / "recording.yml"), str(PROMETHEUS_DIR / "alerts.yml"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_rule_unit_tests_pass_and_cover_every_alert():
    test_file = PROMETHEUS_DIR / "tests" / "alerts_test.yml"
    r = promtool("test", "rules", str(test_file))
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    alerts = {rule["alert"] for g in yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
              for rule in g["rules"]}
    tested_firing = set()
    for case in yaml.safe_load(test_file.read_text())["tests"]:
        for t in case.get("alert_rule_test", []):
            if t["exp_alerts"]:
                tested_firing.add(t["alertname"])
    assert alerts == tested_firing, f"alerts without a firing test: {alerts - tested_firing}"


def test_a_broken_rule_file_fails_promtool(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - record: a:b:c\n        expr: sum(rate(x[5m])\n")
    assert promtool("check", "rules", str(bad)).returncode != 0


def test_drift_alert_thresholds_are_the_documented_constants():
    rules = {r["alert"]: r for g in yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
             for r in g["rules"] if "alert" in r}
    for name, threshold in [("ModelDriftWarning", drift.PSI_WARNING), ("ModelDriftCritical", drift.PSI_CRITICAL)]:
        expr = " ".join(rules[name]["expr"].split())
        assert f"feature:modelserve_drift_psi:10m > {threshold}" in expr
        assert f"increase10m >= {drift.MIN_SAMPLES}" in expr
        assert rules[name]["for"] == drift.ALERT_FOR
    recording = (PROMETHEUS_DIR / "recording.yml").read_text()
    assert f"[{drift.WINDOW}]" in recording
    psi_rule = next(r["expr"] for g in yaml.safe_load(recording)["groups"] for r in g["rules"]
                    if r.get("record") == "feature:modelserve_drift_psi:10m")
    floors = re.findall(r"clamp_min\(bin:modelserve_drift_\w+:\w+, ([0-9.e-]+)\)", psi_rule)
    assert len(floors) == 4 and {float(f) for f in floors} == {drift.PSI_EPS}


def recorded_series() -> list[str]:
    """One selector per recording rule (name plus its static labels)."""
    out = []
    for g in yaml.safe_load((PROMETHEUS_DIR / "recording.yml").read_text())["groups"]:
        for r in g["rules"]:
            labels = ",".join(f'{k}="{v}"' for k, v in (r.get("labels") or {}).items())
            out.append(f"{r['record']}{{{labels}}}" if labels else r["record"])
    return out


SETUP = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server
    from test_monitoring_metrics import drift_manifest
    from monitoring import metrics
    m = metrics.default_metrics()
    # what the service does at start: model status, reference gauges, bins at 0; request series at 0
    metrics.set_model_info("demo", "v1", "text-classification", "CPUExecutionProvider", "ready", 0.7, drift_manifest())
    metrics.set_rollout("demo", "v1", "v2", "shadow", 0.5)
    for version, route in (("v1", "primary"), ("v2", "shadow")):
        m.version_requests.labels("demo", version, route, "200"); m.version_request_duration.labels("demo", version, route)
    for agreement in ("agree", "disagree"):
        m.shadow_comparisons.labels("demo", "v1", "v2", agreement)
    metrics.init_decoding("demo", "v1")  # as a continuously decoded translator's series
    m.requests.labels("classify", "200", "json"); m.request_duration.labels("classify", "200", "json")
    m.requests.labels("classify", "503", "json"); m.request_duration.labels("classify", "503", "json")
    reg = CollectorRegistry(); multiprocess.MultiProcessCollector(reg)
    start_http_server({port}, addr="127.0.0.1", registry=reg)
    while True:
        time.sleep(1)
""")

WORKER = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
    from test_monitoring_metrics import drift_manifest
    from monitoring import metrics
    wid, n = int(sys.argv[1]), int(sys.argv[2])
    manifest = drift_manifest()
    rng = np.random.default_rng(wid)
    tokens = rng.integers(2, 30, size=n)
    classes = rng.choice(["neg", "pos"], p=[0.8, 0.2], size=n)
    np.save(sys.argv[3], tokens)
    for i in range(n):
        with metrics.in_flight("classify"):
            status = 503 if i % 10 == 0 else 200
            metrics.observe_request("classify", status, 0.01 * (1 + i % 7))
            if status == 503:
                metrics.count_error("classify", "demo", "overload")
                continue
        metrics.observe_version_request("demo", "v1", "primary", 200, 0.004 + 0.001 * (i % 5))
        if i % 2:  # every other request mirrored to the shadow candidate v2, which agrees 3 times in 4
            metrics.observe_version_request("demo", "v2", "shadow", 200, 0.006)
            metrics.count_shadow("demo", "v1", "v2", int(i % 4 != 3), int(i % 4 == 3))
        metrics.observe_batch("demo", "v1", 1, {{"preprocess": 0.001, "inference": 0.004, "postprocess": 0.0005}}, 0.002)
        metrics.count_items("demo", "v1", 1)
        metrics.observe_decoding_join("demo", "v1", 0.001, 0.004)
        metrics.observe_decoding_step("demo", "v1", 1 + i % 8, i % 8, 4096)
        metrics.observe_decoding_done("demo", "v1", 3 + i % 5, 0.002)
        if i % 50 == 0:
            metrics.count_freed_rows("demo", "v1", "cancelled", 1)
        metrics.observe_inputs("demo", "v1", {{"tokens": [int(tokens[i])]}})
        metrics.observe_predictions("demo", "v1", manifest,
                                    [{{"token_count": int(tokens[i]), "predicted_class": str(classes[i])}}],
                                    [[str(classes[i])]], [0.6 + 0.04 * (i % 10)])
""")


@pytest.fixture()
def multiprocess_exporter(tmp_path):
    """A /metrics endpoint merging a multiprocess dir, as BentoML serves it; yields (target, dir)."""
    mp_dir = tmp_path / "mp"
    mp_dir.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mp_dir)}
    port = free_port()
    script = tmp_path / "setup.py"
    script.write_text(SETUP.format(root=str(ROOT), tests=str(ROOT / "tests"), port=port))
    proc = subprocess.Popen([sys.executable, str(script)], env=env)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "exporter did not start"
                time.sleep(0.1)
        yield f"127.0.0.1:{port}", env, tmp_path
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_real_prometheus_evaluates_every_recording_rule(multiprocess_exporter):
    target, env, tmp = multiprocess_exporter
    with Prometheus([target]) as prom:
        # the zero-valued series must be scraped before traffic, so rate() sees every increment
        prom.wait_for('modelserve_drift_bin_total{feature="token_count"}', lambda v: len(v) == 3)
        time.sleep(1.5)
        script = tmp / "worker.py"
        script.write_text(WORKER.format(root=str(ROOT), tests=str(ROOT / "tests")))
        sizes = [(0, 400), (1, 600)]
        procs = [subprocess.Popen([sys.executable, str(script), str(w), str(n), str(tmp / f"tokens{w}.npy")], env=env)
                 for w, n in sizes]
        assert [p.wait(timeout=120) for p in procs] == [0, 0]
        sent = sum(n for _, n in sizes)
        errors = sum(len(range(0, n, 10)) for _, n in sizes)

        # counters equal what the two workers recorded
        prom.wait_for("sum(modelserve_requests_total)", lambda v: list(v.values()) == [sent])
        assert list(prom.values('sum(modelserve_request_duration_seconds_count)').values()) == [sent]
        assert list(prom.values('sum(modelserve_errors_total{kind="overload"})').values()) == [errors]
        assert list(prom.values("sum(modelserve_items_total)").values()) == [sent - errors]
        assert list(prom.values("sum(modelserve_requests_in_flight)").values()) == [0]

        missing = []
        for selector in recorded_series():
            try:
                prom.wait_for(selector, timeout=15)
            except TimeoutError:
                missing.append(selector)
        assert not missing, f"recording rules without data: {missing}"

        # the drift statistics Prometheus computes equal the offline ones on the same values
        manifest_profile = __import__("test_monitoring_metrics").drift_manifest().reference_profile.features
        hist = manifest_profile["token_count"]
        tokens = np.concatenate([np.load(tmp / f"tokens{w}.npy")[[i for i in range(n) if i % 10]] for w, n in sizes])
        live = profile.live_fractions(tokens, hist)
        sel = 'model="demo",version="v1",feature="token_count"'
        # (polled: a rule evaluation may still see a scrape taken while the workers were counting)
        for rule, offline in [("psi", profile.psi(hist.fractions, live)),
                              ("js", profile.js_divergence(hist.fractions, live))]:
            prom.wait_for(f"feature:modelserve_drift_{rule}:10m{{{sel}}}",
                          lambda v, want=offline: len(v) == 1 and list(v.values())[0] == pytest.approx(want, rel=1e-6))
        # the class feature is 80/20 live vs 40/60 reference: clearly over the critical threshold
        cls = prom.values('feature:modelserve_drift_psi:10m{feature="predicted_class"}')
        assert list(cls.values())[0] > drift.PSI_CRITICAL
        assert set(prom.targets_health()) == {"up"}
        bad_rules = [r["name"] for g in prom.rule_groups() for r in g["rules"] if r.get("health") == "err"]
        assert not bad_rules, bad_rules
