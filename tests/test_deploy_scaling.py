"""Kubernetes beyond one pod: the training Job, the KServe InferenceService, autoscaling on load
and graceful scale-in, all rendered with kustomize and checked offline.

Built-in kinds go through ``kubernetes-validate --strict``; the InferenceService through the
KServe CRD schema vendored in deploy/k8s/schemas (deploy/scripts/crd_schemas.py). The Job's
torchrun command is parsed by torchrun's own argument parser and the training CLI's, and its
model config resolved, so a manifest that would fail at start fails here.
"""

from __future__ import annotations

import re
import shutil
import sys

import pytest
import yaml

from tests.test_deploy_lint import BIN, ROOT, render, run

sys.path.insert(0, str(ROOT / "deploy" / "scripts"))
import crd_schemas  # noqa: E402

SERVING_TARGETS = ["base", "overlays/gpu", "overlays/registry-pvc", "overlays/load-hpa", "kserve"]
ADAPTER_VALUES = ROOT / "deploy/k8s/overlays/load-hpa/prometheus-adapter-values.yaml"


@pytest.fixture(scope="module")
def rendered():
    return {target: render(target) for target in [*SERVING_TARGETS, "training"]}


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    return doc


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


@pytest.mark.parametrize("target, kinds", [
    ("training", ["Job", "Service", "PersistentVolumeClaim"]),
    ("kserve", ["HorizontalPodAutoscaler", "PersistentVolumeClaim"]),
    ("overlays/load-hpa", ["Deployment", "HorizontalPodAutoscaler"]),
])
def test_builtin_kinds_pass_strict_validation(rendered, target, kinds, tmp_path):
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(rendered[target], sort_keys=False))
    result = run([BIN / "kubernetes-validate", "--strict", path])
    assert result.returncode == 0, result.stdout + result.stderr
    for kind in kinds:
        assert f"passed for resource {kind.lower()}/" in result.stdout + result.stderr, f"{kind} not validated"


# --- KServe ---------------------------------------------------------------------------------


def test_vendored_crd_schema_is_the_recorded_upstream_file():
    import json

    sources = json.loads((crd_schemas.SCHEMA_DIR / "SOURCES.json").read_text())
    for entry in sources:
        assert entry["url"].startswith("https://") and entry["release"] and re.fullmatch(r"[0-9a-f]{40}", entry["commit"])
        assert (crd_schemas.SCHEMA_DIR / entry["licence"].split("(")[1].rstrip(")")).is_file()
    schemas = crd_schemas.load_schemas()  # checks each file's sha256 against SOURCES.json
    assert ("serving.kserve.io/v1beta1", "InferenceService") in schemas


def test_inference_service_matches_the_kserve_schema(rendered):
    schemas = crd_schemas.load_schemas()
    isvc = one(rendered["kserve"], "InferenceService")
    assert crd_schemas.errors(isvc, schemas) == []
    # the check can fail: a misspelt field and a wrong type are both refused
    broken = yaml.safe_load(yaml.safe_dump(isvc))
    broken["spec"]["predictor"]["minReplica"] = 2
    broken["spec"]["predictor"]["containers"][0]["ports"][0]["containerPort"] = "3000"
    found = crd_schemas.errors(broken, schemas)
    assert any("minReplica" in e for e in found) and any("containerPort" in e for e in found), found


def test_inference_service_runs_this_image_as_an_oip_predictor(rendered):
    docs = rendered["kserve"]
    isvc = one(docs, "InferenceService")
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "Standard"
    assert annotations["serving.kserve.io/autoscalerClass"] == "external"  # our HPA, not KServe's
    (container,) = isvc["spec"]["predictor"]["containers"]
    deployment = one(rendered["base"], "Deployment")
    assert container["name"] == "kserve-container"
    assert container["image"] == deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    http, grpc = container["ports"]
    env = env_of(container)
    assert http["containerPort"] == int(env["BENTOML_PORT"]) == 3000
    assert grpc["containerPort"] == int(env["SERVICE_GRPC_PORT"]) == 8001 and "grpc" in grpc["name"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 3000}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 3000}
    # the registry volume the training Job publishes into, mounted by KServe at /mnt/models
    pvc = one(docs, "PersistentVolumeClaim")
    assert env["STORAGE_URI"] == f"pvc://{pvc['metadata']['name']}" and env["MODEL_REGISTRY"] == "/mnt/models"
    hpa = one(docs, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": f"{isvc['metadata']['name']}-predictor"}
    monitor = one(docs, "PodMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= isvc["spec"]["predictor"]["labels"].items()
    assert monitor["podMetricsEndpoints"][0]["port"] == http["name"] and monitor["podMetricsEndpoints"][0]["honorLabels"]


# --- autoscaling on load --------------------------------------------------------------------


@pytest.mark.parametrize("target", ["overlays/load-hpa", "kserve"])
def test_hpa_scales_on_requests_in_flight_beside_cpu(rendered, target):
    from monitoring.metrics import METRIC_NAMES

    metrics = one(rendered[target], "HorizontalPodAutoscaler")["spec"]["metrics"]
    cpu = [m for m in metrics if m["type"] == "Resource"]
    assert cpu and cpu[0]["resource"]["name"] == "cpu"
    (pods,) = [m for m in metrics if m["type"] == "Pods"]
    rules = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    served = {r["name"]["as"]: r for r in rules}
    rule = served[pods["pods"]["metric"]["name"]]  # the adapter serves the metric the HPA asks for
    series = re.match(r"[a-z_:]+", rule["seriesQuery"].strip("'")).group(0)
    assert series in METRIC_NAMES, f"{series} is not a metric the service exports"
    assert float(pods["pods"]["target"]["averageValue"]) > 0


def test_adapter_query_is_valid_promql(tmp_path):
    """The adapter's metricsQuery, with its template filled in as the adapter does, passes promtool."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing (scripts/setup.sh installs prometheus)"
    rules = []
    for i, rule in enumerate(yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]):
        series = re.match(r"[a-z_:]+", rule["seriesQuery"]).group(0)
        expr = (rule["metricsQuery"].replace("<<.Series>>", series)
                .replace("<<.LabelMatchers>>", 'namespace="default",pod=~"modelserve-a|modelserve-b"')
                .replace("<<.GroupBy>>", "pod"))
        rules.append({"record": f"adapter:rule{i}", "expr": expr})
    path = tmp_path / "adapter.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "adapter", "rules": rules}]}))
    result = run([promtool, "check", "rules", path])
    assert result.returncode == 0, result.stdout + result.stderr


def test_service_monitor_keeps_the_services_endpoint_label(rendered):
    endpoint = one(rendered["base"], "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["honorLabels"] is True


# --- graceful scale-in ----------------------------------------------------------------------


def pod_specs(docs: list[dict]) -> list[tuple[dict, dict]]:
    """(pod spec, serving container) of every serving workload in a rendering."""
    out = []
    for d in docs:
        if d["kind"] == "Deployment":
            spec = d["spec"]["template"]["spec"]
            out.append((spec, spec["containers"][0]))
        elif d["kind"] == "InferenceService":
            out.append((d["spec"]["predictor"], d["spec"]["predictor"]["containers"][0]))
    return out


@pytest.mark.parametrize("target", SERVING_TARGETS)
def test_termination_grace_covers_pre_stop_and_drain(rendered, target):
    (spec, container), = pod_specs(rendered[target])
    drain = float(env_of(container)["SERVICE_DRAIN_SECONDS"])
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    assert pre_stop > 0 and drain > 0
    # SIGKILL only after the pre-stop wait, the drain and a few seconds to exit
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + drain + 5


# --- training Job ---------------------------------------------------------------------------


def expand(arg: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of command arguments (fieldRef values replaced by a stand-in)."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1)) or "run-uid-1234", arg)


def training_job(rendered) -> tuple:
    """(torchrun args, container env, container, pod spec, rendered docs) of the training Job."""
    pytest.importorskip("torch", reason="training extras not installed")
    from torch.distributed.run import get_args_parser

    docs = rendered["training"]
    job = one(docs, "Job")
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = env_of(container)
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == int(env["NNODES"])
    assert pod["restartPolicy"] in {"OnFailure", "Never"} and spec["backoffLimit"] >= 1
    # the headless Service gives pod 0 the DNS name the rendezvous endpoint names
    service = one(docs, "Service", pod["subdomain"])
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()

    command = [expand(a, env) for a in container["command"]]
    assert command[0] == "torchrun"
    args = get_args_parser().parse_args(command[1:])
    assert args.module and args.training_script == "training"
    assert int(args.nnodes) == spec["completions"] and int(args.nproc_per_node) == int(env["NPROC_PER_NODE"])
    host, port = args.rdzv_endpoint.rsplit(":", 1)
    assert args.rdzv_backend == "c10d" and host == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    assert int(port) in {p["containerPort"] for p in container["ports"]}
    return args, env, container, pod, docs


def test_training_job_runs_torchrun_across_its_pods(rendered):
    """Indexed pods, a headless Service for pod 0's DNS name, torchrun arguments that parse."""
    training_job(rendered)


def test_training_job_command_is_a_valid_training_run(rendered):
    from training.cli import build_parser, resolve_configs

    args, env, container, pod, docs = training_job(rendered)
    train = build_parser().parse_args(args.training_script_args)
    assert train.command == "train" and train.resume
    configs = resolve_configs(train.models, train.preset, sets=train.set or [])  # ConfigError if invalid
    threads = {cfg.train.threads for cfg in configs.values()}
    assert threads == {1}
    assert float(container["resources"]["requests"]["cpu"]) == int(env["NPROC_PER_NODE"]) * threads.pop()
    # the registry it publishes into is the claim the servers read (overlays/registry-pvc, kserve)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    registry_claim = claims[mounts[train.registry]]
    served = one(rendered["overlays/registry-pvc"], "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert registry_claim in {v["persistentVolumeClaim"]["claimName"] for v in served if "persistentVolumeClaim" in v}
    assert env_of(one(rendered["kserve"], "InferenceService")["spec"]["predictor"]["containers"][0])["STORAGE_URI"] \
        == f"pvc://{registry_claim}"
    registry_pvc = one(docs, "PersistentVolumeClaim", registry_claim)
    assert registry_pvc == one(rendered["overlays/registry-pvc"], "PersistentVolumeClaim")  # one definition
    assert "ReadWriteMany" in registry_pvc["spec"]["accessModes"]
    # checkpoints and data on a volume that outlives the pods, one checkpoint folder per Job
    for path in (train.checkpoint_dir, train.data_dir):
        mount = max((m for m in mounts if path.startswith(m + "/")), key=len)
        assert mounts[mount] in claims, f"{path} is not on a persistent volume"
    assert "$(RUN_ID)" in next(a for a in container["command"] if a.startswith("--checkpoint-dir"))


def test_training_image_dockerfile_lints_clean():
    dockerfile = ROOT / "deploy/training.Dockerfile"
    result = run([BIN / "hadolint", "--config", ROOT / ".hadolint.yaml", dockerfile])
    assert result.returncode == 0, result.stdout + result.stderr
    ignore = [line for line in (ROOT / "deploy/training.Dockerfile.dockerignore").read_text().splitlines()
              if line and not line.startswith("#")]
    assert ignore[0] == "*" and {"!training/", "!modelkit/", "!pyproject.toml"} <= set(ignore)
    text = dockerfile.read_text()
    assert '"torch==2.13.0"' in text and "USER 10001:10001" in text
