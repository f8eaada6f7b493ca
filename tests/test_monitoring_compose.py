"""The compose stack (cannot run here: no image registry): schema-valid and wired to the provisioning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from monitoring.prometheus_runner import PROMETHEUS_DIR

MONITORING = Path(__file__).resolve().parents[1] / "monitoring"
COMPOSE = MONITORING / "docker-compose.yml"
CHECK_JSONSCHEMA = Path(sys.executable).with_name("check-jsonschema")


def test_compose_file_matches_the_compose_spec_schema():
    r = subprocess.run([str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_an_invalid_compose_file_is_rejected(tmp_path):
    bad = tmp_path / "compose.yml"
    bad.write_text("services:\n  x:\n    image: a\n    ports: 3000\n    restart: sometimes-maybe\n")
    r = subprocess.run([str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(bad)],
                       capture_output=True, text=True)
    assert r.returncode != 0


def test_compose_wiring_service_prometheus_grafana():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert set(services) == {"service", "prometheus", "grafana"}
    # every bind mount exists in the repo
    for name, svc in services.items():
        for mount in svc.get("volumes", []):
            src = mount.split(":")[0]
            if src.startswith("."):
                assert (MONITORING / src).exists(), f"{name}: {src} does not exist"
    build = services["service"]["build"]
    assert (MONITORING / build["context"] / build["dockerfile"]).is_file()
    # Prometheus scrapes the compose service name on the port the service publishes
    prom_cfg = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    job = next(j for j in prom_cfg["scrape_configs"] if j["job_name"] == "modelserve")
    assert job["static_configs"][0]["targets"] == ["service:3000"]
    assert "3000:3000" in services["service"]["ports"]
    mounted = {m.split(":")[1] for m in services["prometheus"]["volumes"] if m.startswith("./")}
    for rule_file in prom_cfg["rule_files"]:
        assert f"/etc/prometheus/{rule_file}" in mounted
    # Grafana's datasource URL names the prometheus service
    ds = yaml.safe_load((MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
