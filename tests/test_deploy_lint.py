"""Deploy lint: hadolint on the Dockerfile, lock files vs pyproject, kustomize render + schemas.

kubernetes-validate checks the built-in kinds offline with --strict; the two Prometheus Operator
kinds (no bundled schema) get structural checks here and their rules go through promtool.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "deploy" / "scripts"))
from serve_requirements import requirement_name, serve_requirements  # noqa: E402

TRAINING_ONLY = {"torch", "transformers", "onnx", "onnxscript", "scikit-learn", "sacrebleu", "matplotlib"}


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120, **kw)


def lock_pins(flavour: str) -> dict[str, str]:
    lines = (ROOT / f"deploy/requirements/serve-{flavour}.lock").read_text().splitlines()
    pins = [line.split("==") for line in lines if line and not line.startswith("#")]
    return {requirement_name(name): version for name, version in pins}


# --- Dockerfile -------------------------------------------------------------------------------


def test_hadolint_clean():
    result = run([BIN / "hadolint", "--config", ROOT / ".hadolint.yaml", ROOT / "Dockerfile"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_config_fails_on_warnings(tmp_path):
    """The config's failure-threshold really fails a Dockerfile with warnings (no silent pass)."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:bookworm\nRUN apt-get update && apt-get install -y curl\nRUN cd /tmp\n")
    result = run([BIN / "hadolint", "--config", ROOT / ".hadolint.yaml", bad])
    assert result.returncode != 0
    assert "DL3015" in result.stdout or "DL3009" in result.stdout or "DL3003" in result.stdout


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_lock_matches_pyproject_and_holds_no_training_packages(flavour):
    pins = lock_pins(flavour)
    for req in serve_requirements(ROOT / "pyproject.toml", flavour):
        name, version = requirement_name(req), req.split("==")[1]
        assert pins.get(name) == version, f"{name}: pyproject pins {version}, lock has {pins.get(name)}; run deploy/scripts/lock.sh"
    assert not TRAINING_ONLY & pins.keys()
    assert not {"onnxruntime", "onnxruntime-gpu"} <= pins.keys(), "onnxruntime and onnxruntime-gpu together"
    assert ("onnxruntime-gpu" if flavour == "gpu" else "onnxruntime") in pins


# --- Kubernetes -------------------------------------------------------------------------------


def render(target: str) -> list[dict]:
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "PYTHON": sys.executable, "KUBECTL": str(BIN / "kubectl")}
    result = run(["bash", ROOT / "deploy/scripts/render_k8s.sh", target], env=env)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.fixture(scope="module", params=["base", "overlays/gpu", "overlays/registry-pvc", "overlays/load-hpa"])
def rendered(request, tmp_path_factory):
    docs = render(request.param)
    path = tmp_path_factory.mktemp("k8s") / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return request.param, docs, path


def by_kind(docs: list[dict]) -> dict[str, dict]:
    return {d["kind"]: d for d in docs}


def test_rendered_builtin_kinds_pass_strict_schema_validation(rendered):
    _, docs, path = rendered
    result = run([BIN / "kubernetes-validate", "--strict", path])
    assert result.returncode == 0, result.stdout + result.stderr
    passed = result.stdout + result.stderr
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap"):
        assert f"passed for resource {kind.lower()}/modelserve" in passed, f"{kind} not validated"


def test_strict_validation_rejects_an_unknown_field(rendered, tmp_path):
    """Guards the check above: a misspelt field in the Deployment must fail --strict."""
    _, docs, _ = rendered
    broken = [dict(d) for d in docs]
    deployment = next(d for d in broken if d["kind"] == "Deployment")
    deployment["spec"] = {**deployment["spec"], "replcias": 3}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump_all(broken, sort_keys=False))
    assert run([BIN / "kubernetes-validate", "--strict", path]).returncode != 0


def test_deployment_probes_resources_and_security(rendered):
    target, docs, _ = rendered
    kinds = by_kind(docs)
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule", "ConfigMap"} <= kinds.keys()
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    env = {e["name"]: e["value"] for e in container["env"]}
    if target == "overlays/registry-pvc":
        assert env["MODEL_REGISTRY"] == "/mnt/registry"
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/mnt/registry")
        assert mount["readOnly"] is True
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert volume["persistentVolumeClaim"]["claimName"] in {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    else:
        assert env["MODEL_REGISTRY"] == "/models"  # the models baked into the image
    hpa = kinds["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == kinds["Deployment"]["metadata"]["name"]
    # ServiceMonitor (CRD, no bundled schema): it must select the Service and scrape its named port.
    monitor = kinds["ServiceMonitor"]["spec"]
    service = kinds["Service"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["endpoints"][0]["path"] == "/metrics"
    if target == "overlays/gpu":
        assert container["image"].endswith(":gpu")
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 1
        assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
        assert env["SERVICE_PROVIDER"] == "cuda"
        # one worker per CPU of the limit: on a GPU each worker's event loop is the ceiling
        assert int(env["SERVICE_WORKERS"]) == int(container["resources"]["limits"]["cpu"]) and env["SERVICE_THREADS"] == "1"
    else:
        assert container["image"].endswith(":cpu")
        assert "nvidia.com/gpu" not in container["resources"]["limits"]


def test_pod_is_locked_down_and_its_stop_matches_the_drain(rendered):
    """Read-only root, no capabilities, seccomp RuntimeDefault, non-root, limits; preStop and the grace period
    cover the service's drain (service/drain.py: SIGTERM -> SERVICE_SHUTDOWN_GRACE_S still serving -> the rest of
    SERVICE_DRAIN_SECONDS for requests in flight -> exit)."""
    from service.settings import ServiceSettings

    _, docs, _ = rendered
    pod = by_kind(docs)["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ctx = container["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]} and ctx.get("privileged") is False
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"} == pod["securityContext"]["seccompProfile"]
    assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    limits = container["resources"]["limits"]
    assert {"cpu", "memory", "ephemeral-storage"} <= limits.keys()
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/tmp", "/home/app/bentoml"}, writable  # everything else is the read-only image
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] in ("sleep", "/bin/sleep")
    env = {e["name"]: e.get("value") for e in container["env"]}
    defaults = ServiceSettings.model_fields
    drain = float(env.get("SERVICE_DRAIN_SECONDS", defaults["drain_seconds"].default))
    grace = float(env.get("SERVICE_SHUTDOWN_GRACE_S", defaults["shutdown_grace_s"].default))
    assert 0 < grace < drain  # the grace period is part of the drain, not added to it
    needed = float(pre_stop[1]) + drain + 1  # + about a second to exit (measured: 1.1 s)
    assert needed <= pod["terminationGracePeriodSeconds"] <= needed + 10, (needed, pod["terminationGracePeriodSeconds"])


def test_dockerfile_runs_as_a_numeric_non_root_user():
    """Kubernetes' runAsNonRoot can only verify a numeric USER."""
    users = [line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("USER ")]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0", users


def test_prometheusrule_is_generated_from_monitoring_rules(rendered, tmp_path):
    _, docs, _ = rendered
    rule = by_kind(docs)["PrometheusRule"]
    prom_dir = ROOT / "monitoring/prometheus"
    config = yaml.safe_load((prom_dir / "prometheus.yml").read_text())
    expected = [g for name in config["rule_files"] for g in yaml.safe_load((prom_dir / name).read_text())["groups"]]
    assert rule["spec"]["groups"] == expected
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing (scripts/setup.sh installs prometheus)"
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(yaml.safe_dump(rule["spec"]))
    result = run([promtool, "check", "rules", rules_file])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboards_configmap_holds_every_monitoring_dashboard(rendered):
    _, docs, _ = rendered
    configmap = next(d for d in docs if d["kind"] == "ConfigMap" and "dashboards" in d["metadata"]["name"])
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboards = {p.name: p.read_text() for p in (ROOT / "monitoring/grafana").rglob("*.json") if '"panels"' in p.read_text()}
    assert configmap.get("data", {}) == dashboards
    # client-side `kubectl apply` stores the object in an annotation limited to 256 KiB
    assert len(yaml.safe_dump(configmap)) < 256 * 1024
