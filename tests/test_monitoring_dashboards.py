"""Grafana dashboards and provisioning: generated JSON is committed, provisioning fields are set,
every panel's PromQL parses (promtool) and reads only metrics the service or the rules produce."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from monitoring import drift
from monitoring.grafana import generate_dashboards as gen
from monitoring.grafana.queries import DASHBOARD_DIR, load_dashboards, panel_targets, substitute, variables
from monitoring.metrics import METRIC_NAMES
from monitoring.prometheus_runner import PROMETHEUS_DIR

GRAFANA = DASHBOARD_DIR.parent
DASHBOARDS = load_dashboards()
SAMPLE_VARS = {"model": "demo", "version": "v1|v2", "feature": "token_count|predicted_class"}


def test_committed_dashboards_equal_the_generator_output():
    rendered = gen.render()
    assert set(rendered) == set(DASHBOARDS), "dashboards/ holds files the generator does not write"
    for name, text in rendered.items():
        assert (DASHBOARD_DIR / name).read_text(encoding="utf-8") == text, (
            f"{name} is stale: run python -m monitoring.grafana.generate_dashboards")


def test_dashboards_have_the_fields_grafana_provisioning_needs():
    uids = [d["uid"] for d in DASHBOARDS.values()]
    assert len(set(uids)) == len(uids) == 2
    titles = {d["title"] for d in DASHBOARDS.values()}
    assert titles == {"modelserve / Overview", "modelserve / Model health"}
    for name, d in DASHBOARDS.items():
        assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", d["uid"]), d["uid"]
        assert isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 36
        assert "id" not in d or d["id"] is None, "provisioned dashboards must not carry a database id"
        ids = [p["id"] for p in d["panels"]]
        assert len(set(ids)) == len(ids), f"{name}: duplicate panel ids"
        for p in d["panels"]:
            g = p["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, (name, p["title"], g)
            if p["type"] == "row":
                continue
            assert p["title"] and p.get("description"), (name, p)
            assert p["datasource"] == gen.DATASOURCE, (name, p["title"])
            assert p["fieldConfig"]["defaults"].get("unit"), f"{name}: {p['title']} has no unit"
            if p["type"] in ("timeseries", "stat"):  # heatmaps colour by a scheme, not thresholds
                assert p["fieldConfig"]["defaults"].get("thresholds", {}).get("steps"), p["title"]
            refs = [t["refId"] for t in p["targets"]]
            assert refs and len(set(refs)) == len(refs), p["title"]
            for t in p["targets"]:
                assert t["datasource"] == gen.DATASOURCE and t["expr"].strip()
                if p["type"] in ("timeseries", "heatmap"):
                    assert t["legendFormat"], f"{name}: {p['title']} {t['refId']} has no legend"
        for v in variables(d):
            assert v["datasource"] == gen.DATASOURCE and v["query"].startswith("label_values(")


def test_model_health_has_a_model_variable_and_drift_thresholds_lines():
    d = DASHBOARDS["model-health.json"]
    assert [v["name"] for v in variables(d)] == ["model", "version", "feature"]
    psi = next(p for p in d["panels"] if p["title"] == "Drift per feature (PSI)")
    steps = psi["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps] == [None, drift.PSI_WARNING, drift.PSI_CRITICAL]
    assert psi["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "line"
    for p in d["panels"]:
        for t in p.get("targets", []):
            if "model=" in t["expr"] and "$model" not in t["expr"]:
                pytest.fail(f"{p['title']} ignores the model variable: {t['expr']}")


def test_overview_latency_and_error_thresholds_match_the_alerts():
    alerts = {r["alert"]: " ".join(r["expr"].split()) for g in yaml.safe_load(
        (PROMETHEUS_DIR / "alerts.yml").read_text())["groups"] for r in g["rules"]}
    assert alerts["HighRequestLatencyP99"].endswith(f"> {gen.LATENCY_P99_THRESHOLD_S}")
    assert alerts["HighErrorRatio"].endswith(f"> {gen.ERROR_RATIO_THRESHOLD}")
    titles = {p["title"] for p in DASHBOARDS["overview.json"]["panels"]}
    for needed in ["Requests/s by endpoint and status", "Error ratio by endpoint", "Latency p50 / p95 / p99 by endpoint",
                   "Mean batch size by model", "In-flight requests by endpoint", "GPU utilisation", "GPU memory"]:
        assert needed in titles


def test_provisioning_points_at_the_dashboards_and_the_datasource_uid():
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    assert ds["apiVersion"] == 1
    assert [d["uid"] for d in ds["datasources"]] == [gen.DATASOURCE["uid"]]
    assert ds["datasources"][0]["type"] == "prometheus"
    prov = yaml.safe_load((GRAFANA / "provisioning/dashboards/modelserve.yml").read_text())
    assert prov["apiVersion"] == 1 and prov["providers"][0]["type"] == "file"
    compose = yaml.safe_load((GRAFANA.parent / "docker-compose.yml").read_text())
    grafana_mounts = compose["services"]["grafana"]["volumes"]
    path = prov["providers"][0]["options"]["path"]
    assert any(m.endswith(f":{path}:ro") and m.startswith("./grafana/dashboards") for m in grafana_mounts), grafana_mounts


def known_series() -> set[str]:
    names = set()
    for n in METRIC_NAMES:
        names |= {n, f"{n}_bucket", f"{n}_sum", f"{n}_count"}
    for g in yaml.safe_load((PROMETHEUS_DIR / "recording.yml").read_text())["groups"]:
        names |= {r["record"] for r in g["rules"]}
    return names


SERIES = re.compile(r"\b(?:[a-z_]+:)?modelserve_[a-zA-Z0-9_]+(?::[a-zA-Z0-9_]+)?")


def test_every_panel_query_parses_and_reads_known_series(tmp_path):
    known = known_series()
    rules = []
    for name, d in DASHBOARDS.items():
        for p, t in panel_targets(d):
            expr = substitute(t["expr"], SAMPLE_VARS)
            rules.append({"record": f"dashboard:check:{len(rules)}", "expr": expr})
            found = SERIES.findall(expr)
            assert found, f"{name} / {p['title']}: no modelserve series in {expr}"
            for series in found:
                assert series in known, f"{name} / {p['title']}: unknown series {series!r} in {expr}"
        for v in variables(d):
            for series in SERIES.findall(v["query"]):
                assert series in known, v
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    r = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dashboard_json_is_plain_json_without_generator_leftovers():
    for name, d in DASHBOARDS.items():
        text = json.dumps(d)
        assert '"_w"' not in text and '"_h"' not in text, name


# Standard dashboard fields that grafana-foundation-sdk's models do not carry (Grafana writes them itself).
SDK_UNMODELLED = {"/annotations/list[]/builtIn", "/panels[]/maxPerRow", "/templating/list[]/definition"}


def _key_paths(obj, prefix: str = "") -> set[str]:
    out = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            out |= {f"{prefix}/{k}"} | _key_paths(v, f"{prefix}/{k}")
    elif isinstance(obj, list):
        for v in obj:
            out |= _key_paths(v, f"{prefix}[]")
    return out


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_grafana_models_parse_every_field_of_the_dashboards(name):
    """Round trip through Grafana's typed dashboard models: a misspelt or misplaced field is lost."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()
    data = DASHBOARDS[name]
    parsed = json.loads(JSONEncoder(sort_keys=True).encode(Dashboard.from_json(data)))
    assert parsed["uid"] == data["uid"] and parsed["schemaVersion"] == data["schemaVersion"]
    lost = _key_paths(data) - _key_paths(parsed) - SDK_UNMODELLED
    assert not lost, f"fields Grafana's models do not know: {sorted(lost)}"


def test_the_grafana_model_check_catches_a_misspelt_field():
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()
    data = json.loads(json.dumps(DASHBOARDS["overview.json"]))
    data["panels"][1]["fieldConfig"]["defaults"]["thresholdz"] = data["panels"][1]["fieldConfig"]["defaults"]["thresholds"]
    parsed = json.loads(JSONEncoder(sort_keys=True).encode(Dashboard.from_json(data)))
    assert "/panels[]/fieldConfig/defaults/thresholdz" in _key_paths(data) - _key_paths(parsed)
