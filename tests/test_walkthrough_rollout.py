"""The closed loop of the README's walkthrough, on the smoke preset, with the real service and Prometheus:

shifted traffic fires the drift alert -> retrain (published, LATEST unchanged) -> gate -> canary 10% ->
compare on the dashboard's own queries -> promote; then a second candidate that disagrees with the
primary in shadow mode is rolled back (unloaded) and never answers a client.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import numpy as np

from modelkit.onnx_session import SessionSettings
from modelkit.registry import latest_version, load_version, read_history
from modelkit.runtimes import create_runtime
from monitoring.grafana.queries import load_dashboards, panel_targets, substitute
from monitoring.prometheus_runner import Prometheus
from service_support import copy_model, names_by_task, serve, smoke_models  # noqa: F401 (fixture)

TOKEN = "walkthrough-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def _panel(title: str, model: str) -> str:
    """The PromQL of a model-health panel, for ``model``: what an operator looks at."""
    dash = load_dashboards()["model-health.json"]
    expr = next(t["expr"] for p, t in panel_targets(dash) if p["title"] == title)
    return substitute(expr, {"model": model, "version": ".*", "feature": ".*"})


def _by_version(prom: Prometheus, expr: str, label: str = "version") -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, value in prom.values(expr).items():
        key = dict(labels)[label] + (f" p{dict(labels)['quantile']}" if "quantile" in dict(labels) else "")
        out[key] = out.get(key, 0.0) + value
    return out


def _train(root: Path, name: str, data_dir: Path, *extra: str) -> str:
    """Retrain ``name`` on the smoke preset without moving LATEST; returns the new version."""
    from training.cli import main

    before = set(p.name for p in (root / name).iterdir())
    rc = main(["train", "--preset", "smoke", "--models", name, "--registry", str(root), "--data-dir", str(data_dir),
               "--no-promote", "--set", "train.threads=1", "--set", "train.progress=false",
               "--set", 'export.exporters=["legacy"]', *extra])
    assert rc == 0, "the retrained model must pass its gate"
    (new,) = {p.name for p in (root / name).iterdir() if p.is_dir() and not p.name.startswith(".")} - before
    return new


def _traffic(url: str, name: str, texts: list[str], rounds: int, prefix: str) -> list[str]:
    """``rounds`` rounds (a second apart) of single-text requests, each with a request id; versions answering."""
    versions = []
    with httpx.Client(base_url=url, timeout=30) as c:
        for r in range(rounds):
            for i, text in enumerate(texts):
                resp = c.post("/classify", json={"model": name, "texts": [text]},
                              headers={"x-request-id": f"{prefix}-{r}-{i}"})
                assert resp.status_code == 200, resp.text
                versions.append(resp.json()["version"])
            time.sleep(1.0)
    return versions


def test_drift_retrain_canary_promote_then_a_worse_candidate_is_rolled_back(smoke_models, tmp_path):
    from monitoring.drift_replay import _rng_pick
    from training.data.text import load_sentiment
    from training.data.translation import is_sentence, read_ding

    name = names_by_task(smoke_models)["text-classification"]
    root = tmp_path / "registry"
    v1 = copy_model(smoke_models, name, root).name
    tweets = [e.text for e in _rng_pick(load_sentiment(), 60, 1)]
    german = _rng_pick([p.src for p in read_ding() if is_sentence(p.src)], 640, 2)
    env = {"SERVICE_RELOAD": "poll", "SERVICE_RELOAD_INTERVAL_S": "0.5", "SERVICE_ADMIN_TOKEN": TOKEN,
           "SERVICE_MODELS": json.dumps([name])}
    with serve(root, tmp_path / "serve", env=env) as server, \
            Prometheus([server.url.removeprefix("http://")]) as prom, server.client() as c:
        prom.wait_for(f'modelserve_drift_reference_fraction{{model="{name}"}}')

        # 1. the inputs change (German instead of English tweets): the drift alert fires
        for i in range(0, len(german), 32):
            assert c.post("/classify", json={"model": name, "texts": german[i:i + 32]}).status_code == 200
            time.sleep(0.05)
        alerts = prom.wait_for('ALERTS{alertname="ModelDriftWarning"}', timeout=40)
        assert any(dict(k)["model"] == name and dict(k)["alertstate"] in ("pending", "firing") for k in alerts)

        # 2. retrain (here a new seed; with your data: --data NAME=new.csv), gated, published, LATEST unchanged
        v2 = _train(root, name, tmp_path / "data", "--set", "train.seed=7")
        assert latest_version(root, name) == v1

        # 3. canary: 10% of request ids go to v2
        resp = c.post(f"/v2/repository/models/{name}/load", headers=ADMIN,
                      json={"parameters": {"version": v2, "role": "candidate", "mode": "canary", "share": 0.1}})
        assert resp.status_code == 200, resp.text
        answered = _traffic(server.url, name, tweets, 8, "canary")
        assert 0.04 <= answered.count(v2) / len(answered) <= 0.18, answered.count(v2)

        # 4. compare on the dashboard's Rollout row: traffic split, errors, latency
        traffic_q = _panel("Traffic by version", name)
        prom.wait_for(traffic_q, lambda v: len(_by_version(prom, traffic_q)) == 2)
        rates = _by_version(prom, traffic_q)
        assert rates[v2] < rates[v1]
        errors = _by_version(prom, _panel("Error ratio by version", name))
        assert errors == {v1: 0.0, v2: 0.0}, errors
        latency = _by_version(prom, _panel("Latency p50 / p99 by version", name))
        assert latency[f"{v2} p0.99"] <= 1.5 * latency[f"{v1} p0.99"] + 0.01, latency  # CandidateLatencyWorse's rule

        # 5. promote: LATEST moves, every worker switches, the rollout ends
        from training.cli import main

        assert main(["promote", name, v2, "--registry", str(root), "--why", "canary clean"]) == 0
        deadline = time.monotonic() + 20
        while {c.post("/classify", json={"model": name, "texts": ["x"]}).json()["version"] for _ in range(4)} != {v2}:
            assert time.monotonic() < deadline, "the service did not switch to the promoted version"
            time.sleep(0.2)
        info = next(m for m in c.get("/models").json()["models"] if m["name"] == name)
        assert info["version"] == v2 and info["rollout"] is None
        assert [(r.action, r.from_version, r.to_version) for r in read_history(root, name)][-1] == ("promote", v1, v2)

        # 6. a second candidate, barely trained, shadowed: it answers no client, and disagrees too often
        # its logits are nearly tied, so int8 rounding flips the argmax on ~1 input in 10 (CI saw 0.88 agreement
        # against the 0.9 floor): the int8 parity floor is not what this step is about
        v3 = _train(root, name, tmp_path / "data", "--set", "train.seed=3", "--set", "train.epochs=1",
                    "--set", "train.max_steps_per_epoch=1", "--set", "train.lr=1e-5",
                    "--set", "export.int8_min_agreement=0")
        resp = c.post(f"/v2/repository/models/{name}/load", headers=ADMIN,
                      json={"parameters": {"version": v3, "role": "candidate", "mode": "shadow", "share": 1.0}})
        assert resp.status_code == 200, resp.text
        answered = _traffic(server.url, name, tweets, 4, "shadow")
        assert set(answered) == {v2}
        agreement_q = _panel("Shadow agreement", name)
        agreement = prom.wait_for(agreement_q, timeout=30)
        (ratio,) = agreement.values()
        assert ratio < 0.9, f"the barely trained candidate agrees on {ratio:.0%}: it should look worse"
        texts = tweets * 4
        compared = f'modelserve_shadow_comparisons_total{{model="{name}"}}'
        # the last comparisons reach Prometheus after the service's metrics flush and the next scrape
        prom.wait_for(compared, lambda v: sum(v.values()) == len(texts), timeout=30)
        counted = _by_version(prom, compared, "agreement")
        runtimes = []
        for version in (v2, v3):
            manifest, vdir = load_version(root, name, version)
            runtimes.append(create_runtime(manifest, vdir, SessionSettings(provider="cpu")))
            runtimes[-1].load()
        same = [a["labels"][0]["label"] == b["labels"][0]["label"]
                for a, b in zip(runtimes[0].predict(texts), runtimes[1].predict(texts))]
        assert counted.get("agree", 0) == float(np.sum(same)) and counted.get("disagree", 0) == float(len(same) -
                                                                                                     np.sum(same))

        # 7. roll the rollout back: the candidate is unloaded, v2 keeps serving, LATEST never moved
        assert c.post(f"/v2/repository/models/{name}/unload", headers=ADMIN,
                      json={"parameters": {"version": v3}}).status_code == 200
        info = next(m for m in c.get("/models").json()["models"] if m["name"] == name)
        assert info["rollout"] is None and [v["version"] for v in info["versions"]] == [v2]
        assert latest_version(root, name) == v2
        assert {c.post("/classify", json={"model": name, "texts": ["y"]}).json()["version"] for _ in range(4)} == {v2}


