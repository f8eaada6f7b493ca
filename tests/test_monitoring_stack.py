"""The real stack: ``bentoml serve`` with two workers over the smoke models, scraped every second by the
real Prometheus with this repository's rules. Traffic goes to every endpoint; then counters and
histogram counts must equal the requests sent, and every dashboard panel's PromQL, every dashboard
variable and every recording rule must return data."""

from __future__ import annotations

import base64
import json
import math
import shutil
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry

from modelkit.image import encode_png
from monitoring.grafana.queries import load_dashboards, panel_targets, substitute, variables
from monitoring.metrics import ServiceMetrics
from monitoring.prometheus_runner import PROMETHEUS_DIR, Prometheus
from decoding_support import step_registry  # noqa: F401 (fixture: translators with the decoder_step graph)
from service_support import copy_model, names_by_task, serve, smoke_models  # noqa: F401 (fixture)

ENDPOINT_BY_TASK = {"text-classification": "/classify", "multi-label-classification": "/classify",
                    "image-classification": "/classify_image", "translation": "/translate"}
TEXTS = ["what a lovely morning", "this is the worst service ever", "the meeting is on monday",
         "Das Haus ist klein.", "ich habe keine Zeit", "a tool to edit text files and manage packages"]
ROUNDS = 8  # traffic rounds, about a second apart, so rate() windows see increments over time


def _body(task: str, model: str, rng: np.random.Generator, n: int) -> dict:
    if task == "image-classification":
        images = [base64.b64encode(encode_png(rng.integers(0, 256, (28, 28), dtype=np.uint8))).decode() for _ in range(n)]
        return {"model": model, "images": images}
    body = {"model": model, "texts": [TEXTS[int(i)] for i in rng.integers(0, len(TEXTS), n)]}
    if task == "translation":
        body["max_new_tokens"] = 8
    return body


def _bad_item(task: str, model: str) -> dict:
    if task == "image-classification":
        return {"model": model, "images": [base64.b64encode(b"not an image").decode()]}
    return {"model": model, "texts": ["word " * 2000]}  # over max_text_chars


SHADOW_VERSION = "shadow-candidate"


@pytest.fixture(scope="module")
def registry(step_registry: Path, tmp_path_factory) -> Path:
    """The smoke models (translators decoded continuously), plus a second version of the text classifier
    (a copy) to shadow its primary."""
    smoke_models = step_registry
    root = tmp_path_factory.mktemp("stack_registry")
    for latest in smoke_models.glob("*/LATEST"):
        copy_model(smoke_models, latest.parent.name, root)
    text = names_by_task(smoke_models)["text-classification"]
    primary = root / text / (root / text / "LATEST").read_text().strip()
    shutil.copytree(primary, primary.parent / SHADOW_VERSION)
    manifest = json.loads((primary.parent / SHADOW_VERSION / "manifest.json").read_text())
    manifest["version"] = SHADOW_VERSION
    (primary.parent / SHADOW_VERSION / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def stack(registry: Path, tmp_path_factory):
    """Two-worker service (the text classifier mirrored to a shadow candidate) and a Prometheus scraping
    it every second."""
    work = tmp_path_factory.mktemp("monitoring_stack")
    text = names_by_task(registry)["text-classification"]
    rollouts = {text: {"candidate": SHADOW_VERSION, "mode": "shadow", "share": 1.0}}
    with serve(registry, work, env={"SERVICE_WORKERS": "2", "SERVICE_ROLLOUTS": json.dumps(rollouts)}) as server:
        target = server.url.removeprefix("http://")
        with Prometheus([target], scrape_interval="1s", evaluation_interval="1s") as prom:
            yield server, prom, work


@pytest.fixture(scope="module")
def traffic(stack, registry):
    """Send requests to every model (some invalid, some to an unknown model); return what was sent."""
    server, prom, _ = stack
    prom.wait_for('up{job="modelserve"}', lambda v: list(v.values()) == [1.0])
    # the model series exist at 0 before traffic, so rate() sees the first increments
    prom.wait_for("modelserve_drift_reference_fraction")
    models = models_by_name(registry)
    sent: Counter = Counter()  # (endpoint, status) -> requests
    items: Counter = Counter()  # model -> items answered 200
    lock = threading.Lock()
    rng = np.random.default_rng(0)
    jobs = []
    for r in range(ROUNDS):
        for model, task in models.items():
            endpoint = ENDPOINT_BY_TASK[task]
            for _ in range(4):
                jobs.append((r, endpoint, model, _body(task, model, rng, int(rng.integers(1, 4)))))
            jobs.append((r, endpoint, model, {"model": model}))  # missing field: 422
            jobs.append((r, endpoint, model, _bad_item(task, model)))  # an item the model refuses: 422
        jobs.append((r, "/classify", "no-such-model", {"model": "no-such-model", "texts": ["x"]}))  # 404

    def send(client: httpx.Client, job) -> None:
        _, endpoint, model, body = job
        resp = client.post(endpoint, json=body)
        with lock:
            sent[(endpoint, str(resp.status_code))] += 1
            if resp.status_code == 200:
                items[model] += len(resp.json()["results"])

    with server.client() as client, ThreadPoolExecutor(4) as pool:
        for r in range(ROUNDS):
            list(pool.map(lambda j: send(client, j), [j for j in jobs if j[0] == r]))
            time.sleep(1.0)
    assert sum(n for (_, status), n in sent.items() if status == "200") > 0, sent
    return {"sent": sent, "items": items, "tasks": names_by_task(registry), "models": models}


def models_by_name(registry: Path) -> dict[str, str]:
    """Every model with a LATEST version -> its task."""
    out = {}
    for latest in sorted(registry.glob("*/LATEST")):
        manifest = json.loads((latest.parent / latest.read_text().strip() / "manifest.json").read_text())
        out[latest.parent.name] = manifest["task"]
    return out


def _by(prom: Prometheus, expr: str, label: str) -> dict[str, float]:
    return {dict(k)[label]: v for k, v in prom.values(expr).items()}


def test_counters_and_histogram_counts_equal_the_requests_sent(stack, traffic):
    server, prom, work = stack
    sent = traffic["sent"]
    expected = {f"{e} {s}": float(n) for (e, s), n in sent.items()}
    endpoints = "|".join(sorted({e for e, _ in sent}))

    def series(expr):
        return {f"{dict(k)['endpoint']} {dict(k)['status']}": v for k, v in prom.values(expr).items()}

    counted = f'sum by (endpoint, status) (modelserve_requests_total{{endpoint=~"{endpoints}"}})'
    prom.wait_for(counted, lambda v: series(counted) == expected, timeout=30)
    hist = f'sum by (endpoint, status) (modelserve_request_duration_seconds_count{{endpoint=~"{endpoints}"}})'
    # a flush writes the counters, then the histograms: a scrape between the two sees the counter first
    prom.wait_for(hist, lambda v: series(hist) == expected, timeout=30)
    assert series(hist) == expected

    items = {m: float(n) for m, n in traffic["items"].items()}
    primary = f'version!="{SHADOW_VERSION}"'  # the shadow candidate's items are counted on their own below
    assert _by(prom, f"sum by (model) (modelserve_items_total{{{primary}}})", "model") == items
    assert _by(prom, f"sum by (model) (modelserve_batch_size_rows_sum{{{primary}}})", "model") == items
    classifiers = {m: n for m, n in items.items() if traffic["models"][m] != "translation"}
    assert {m: v for m, v in _by(prom, f"sum by (model) (modelserve_prediction_confidence_count{{{primary}}})",
                                 "model").items() if m in classifiers} == classifiers
    # every answered item counted once in each drift feature of its model
    text = traffic["tasks"]["text-classification"]
    assert _by(prom, f'sum by (model) (modelserve_drift_bin_total{{model="{text}", feature="token_count", '
               f'{primary}}})', "model") == {text: items[text]}
    # the shadow (share 1.0) answered every item the primary answered, and agreed on all (it is a copy)
    shadow = f'model="{text}", version="{SHADOW_VERSION}"'
    prom.wait_for(f"sum(modelserve_items_total{{{shadow}}})", lambda v: list(v.values()) == [items[text]], timeout=30)
    agree = prom.values(f'sum by (agreement) (modelserve_shadow_comparisons_total{{model="{text}"}})')
    assert {dict(k)["agreement"]: v for k, v in agree.items()} == {"agree": items[text], "disagree": 0.0}
    bad = sum(n for (e, s), n in sent.items() if s.startswith("4") and s != "404")  # 413, 422
    assert sum(prom.values('sum(modelserve_errors_total{kind="validation"})').values()) == bad, sent
    assert sum(prom.values('sum(modelserve_errors_total{kind="not_found"})').values()) == sent[("/classify", "404")]
    assert list(prom.values("sum(modelserve_requests_in_flight)").values()) == [0.0]

    # the counts came from both workers: each wrote its own multiprocess files
    pids = {p.stem.split("_")[-1] for p in (work / "bentoml_home").rglob("counter_*.db")}
    assert len(pids) >= 2, f"expected two worker processes to record metrics, files from {pids}"


def _gpu_present() -> bool:
    return ServiceMetrics(CollectorRegistry()).sample_gpu()


def test_every_dashboard_panel_variable_and_recording_rule_returns_data(stack, traffic):
    _, prom, _ = stack
    models = sorted(traffic["models"])
    gpu = _gpu_present()
    # rates need two scrapes after the traffic: wait for the slowest recording rule
    prom.wait_for("feature:modelserve_drift_psi:10m", timeout=30)

    empty = []
    for name, dash in load_dashboards().items():
        for v in variables(dash):
            query = substitute(v["query"], {"model": models[0]})
            metric, label = query.removeprefix("label_values(").removesuffix(")").rsplit(",", 1)
            found = prom._get(f"/api/v1/label/{label.strip()}/values", **{"match[]": metric.strip()})
            if not found:
                empty.append(f"{name}: variable {v['name']}: {query}")
        for panel, target in panel_targets(dash):
            if "gpu" in target["expr"] and not gpu:
                continue  # no GPU on this host: the GPU panels are meant to be empty (checked below)
            ok = False
            for model in models:
                expr = substitute(target["expr"], {"model": model, "version": ".*", "feature": ".*"})
                if any(math.isfinite(v) for v in prom.values(expr).values()):
                    ok = True
                    break
            if not ok:
                empty.append(f"{name}: {panel['title']} [{target['refId']}]: {target['expr']}")
    for g in yaml.safe_load((PROMETHEUS_DIR / "recording.yml").read_text())["groups"]:
        for rule in g["rules"]:
            labels = ",".join(f'{k}="{v}"' for k, v in (rule.get("labels") or {}).items())
            if not prom.values(f"{rule['record']}{{{labels}}}"):
                empty.append(f"recording rule {rule['record']} {labels}")
    assert not empty, "no data for:\n" + "\n".join(empty)
    bad_rules = [r["name"] for grp in prom.rule_groups() for r in grp["rules"] if r.get("health") == "err"]
    assert not bad_rules, bad_rules
    if not gpu:
        assert not prom.values("modelserve_gpu_utilization_ratio"), "GPU series on a host without GPU"


def test_model_status_and_reference_are_exposed_for_every_model(stack, traffic):
    _, prom, _ = stack
    ready = _by(prom, 'model:modelserve_model_info:max{status="ready"} == 1', "model")
    assert set(ready) == set(traffic["models"])
    for model in ready:
        sums = prom.values(f'sum by (version, feature) (bin:modelserve_drift_reference_fraction:max{{model="{model}"}})')
        assert sums and all(abs(v - 1) < 1e-3 for v in sums.values()), (model, sums)
