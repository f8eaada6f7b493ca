"""Model lifecycle in a running service (real ``bentoml serve``, 2 workers): new versions without a
restart, versions that must never be served, the repository API, canary and shadow rollouts."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest

from modelkit.onnx_session import SessionSettings
from modelkit.registry import load_version
from modelkit.runtimes import create_runtime
from service_support import copy_model, model_graph, names_by_task, serve, smoke_models  # noqa: F401 (fixture)

TOKEN = "test-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
TEXTS = ["what a lovely day", "my flight got cancelled again", "the food was cold", "best concert ever",
         "I am not sure about this", "terrible service, never again", "it is raining", "thanks a lot!"]


@pytest.fixture(scope="module")
def name(smoke_models: Path) -> str:
    return names_by_task(smoke_models)["text-classification"]


@pytest.fixture(scope="module")
def candidate_registry(smoke_models: Path, name: str, tmp_path_factory) -> tuple[Path, str, str]:
    """A registry with the smoke text classifier and a second, differently trained version of it
    (LATEST still on the first): (root, primary version, candidate version)."""
    from training.cli import main

    root = tmp_path_factory.mktemp("lifecycle_registry")
    copy_model(smoke_models, name, root)
    primary = (root / name / "LATEST").read_text().strip()
    rc = main(["train", "--preset", "smoke", "--models", name, "--registry", str(root), "--data-dir",
               str(tmp_path_factory.mktemp("data")), "--set", "train.seed=7", "--set", "train.epochs=1",
               "--set", "train.threads=1", "--set", "train.progress=false", "--set", 'export.exporters=["legacy"]'])
    assert rc == 0
    candidate = (root / name / "LATEST").read_text().strip()
    assert candidate != primary
    (root / name / "LATEST").write_text(primary + "\n")  # trained and gated, not promoted
    return root, primary, candidate


def _versions_seen(url: str, name: str, n: int = 24) -> set[str]:
    """Versions answering ``n`` requests, each on a new connection (so both workers are asked); an
    answer other than 200 shows up as its status code."""
    seen = set()
    for _ in range(n):
        resp = httpx.post(f"{url}/classify", json={"model": name, "texts": ["hello"]}, timeout=30)
        seen.add(resp.json()["version"] if resp.status_code == 200 else str(resp.status_code))
    return seen


def _wait_for(predicate, timeout: float = 20.0, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(poll)


def _bump(version_dir: Path, new_version: str) -> Path:
    """A copy of a version folder under a new version id (manifest updated, files unchanged)."""
    import shutil

    dst = version_dir.parent / new_version
    shutil.copytree(version_dir, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["version"] = new_version
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def _set_latest(root: Path, name: str, version: str) -> None:
    tmp = root / name / "LATEST.tmp"
    tmp.write_text(version + "\n")
    tmp.replace(root / name / "LATEST")


WATCH = {"SERVICE_WORKERS": "2", "SERVICE_RELOAD": "poll", "SERVICE_RELOAD_INTERVAL_S": "0.5",
         "SERVICE_ADMIN_TOKEN": TOKEN, "SERVICE_STATE_SYNC_S": "0.2"}


def test_moved_latest_is_served_by_every_worker_and_bad_versions_never(smoke_models, name, tmp_path):
    root = tmp_path / "registry"
    vdir = copy_model(smoke_models, name, root)
    old = vdir.name
    with serve(root, tmp_path / "serve", env=WATCH) as server:
        assert _versions_seen(server.url, name) == {old}
        # a new good version: every worker switches within the poll interval plus its load time
        _bump(vdir, "v2")
        t0 = time.monotonic()
        _set_latest(root, name, "v2")
        assert _wait_for(lambda: _versions_seen(server.url, name, 8) == {"v2"}), "workers did not switch"
        assert time.monotonic() - t0 < 10
        assert _versions_seen(server.url, name) == {"v2"}

        # a corrupt version: refused, v2 keeps answering, the failure is reported
        bad = _bump(vdir, "v3-corrupt")
        graph = model_graph(bad)
        data = bytearray(graph.read_bytes())
        data[len(data) // 2] ^= 0xFF
        graph.write_bytes(bytes(data))
        _set_latest(root, name, "v3-corrupt")
        with server.client() as c:
            info = _wait_for(lambda: next(m for m in c.get("/models").json()["models"] if m["name"] == name)
                             .get("last_load_error"))
            assert info and info["version"] == "v3-corrupt" and "checksum mismatch" in info["reason"]
            assert str(root) not in json.dumps(info)  # no server paths
            metrics = c.get("/metrics").text
        assert re.search(rf'modelserve_model_info\{{[^}}]*model="{name}"[^}}]*status="failed"[^}}]*'
                         r'version="v3-corrupt"\} 1', metrics)
        assert _versions_seen(server.url, name) == {"v2"}
        assert "v3-corrupt) FAILED to load" in server.log()

        # a version that failed its gate: never served, not even when asked for by name
        gated = _bump(vdir, "v4-gate-failed")
        manifest = json.loads((gated / "manifest.json").read_text())
        manifest["gate"]["passed"] = False
        (gated / "manifest.json").write_text(json.dumps(manifest))
        with server.client() as c:
            resp = c.post(f"/v2/repository/models/{name}/load", headers=ADMIN,
                          json={"parameters": {"version": "v4-gate-failed"}})
        assert resp.status_code == 422 and "failed its quality gate" in resp.json()["error"]
        _set_latest(root, name, "v4-gate-failed")
        time.sleep(1.5)
        assert _versions_seen(server.url, name) == {"v2"}


def test_repository_api_needs_the_admin_token_and_loads_unloads_indexes(candidate_registry, name, tmp_path):
    root, primary, candidate = candidate_registry
    with serve(root, tmp_path / "serve", env=WATCH) as server, server.client() as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            resp = c.post("/v2/repository/index", headers=headers)
            assert resp.status_code == 401 and TOKEN not in resp.text
        assert TOKEN not in server.log()
        index = c.post("/v2/repository/index", headers=ADMIN).json()
        assert {(r["name"], r["version"], r["state"], r["role"]) for r in index} == {(name, primary, "READY", "primary")}

        # load the candidate as the primary: every worker follows (desired state shared between workers)
        resp = c.post(f"/v2/repository/models/{name}/load", headers=ADMIN, json={"parameters": {"version": candidate}})
        assert resp.status_code == 200, resp.text
        assert _wait_for(lambda: _versions_seen(server.url, name, 8) == {candidate})
        # unload: the model is gone everywhere (404 naming it), then back with load (LATEST)
        assert c.post(f"/v2/repository/models/{name}/unload", headers=ADMIN).status_code == 200
        assert _wait_for(lambda: all(httpx.post(f"{server.url}/classify", json={"model": name, "texts": ["x"]})
                                     .status_code == 404 for _ in range(8)))
        assert "unloaded" in c.post("/classify", json={"model": name, "texts": ["x"]}).json()["error"]["message"]
        assert c.post(f"/v2/repository/models/{name}/load", headers=ADMIN).status_code == 200
        assert _wait_for(lambda: _versions_seen(server.url, name, 8) == {primary})
        # bad requests name the field
        resp = c.post(f"/v2/repository/models/{name}/load", headers=ADMIN, json={"parameters": {"version": "../x"}})
        assert resp.status_code == 422 and "version" in resp.json()["error"]
        resp = c.post(f"/v2/repository/models/{name}/load", headers=ADMIN, json={"parameters": {"colour": 1}})
        assert resp.status_code == 422 and "colour" in resp.json()["error"]
        resp = c.post("/v2/repository/models/nope/load", headers=ADMIN)
        assert resp.status_code == 404


def test_canary_share_is_held_and_deterministic_per_request_id(candidate_registry, name, tmp_path):
    root, primary, candidate = candidate_registry
    env = {**WATCH, "SERVICE_ROLLOUTS": json.dumps({name: {"candidate": candidate, "mode": "canary", "share": 0.3}})}
    with serve(root, tmp_path / "serve", env=env) as server, server.client() as c:
        answers = {}
        for i in range(2000):
            resp = c.post("/classify", json={"model": name, "texts": ["hello"]}, headers={"x-request-id": f"req-{i}"})
            answers[i] = resp.json()["version"]
        share = sum(v == candidate for v in answers.values()) / len(answers)
        assert abs(share - 0.3) <= 0.03, share
        assert set(answers.values()) == {primary, candidate}
        for i in range(0, 2000, 97):  # a retry with the same id lands on the same version, whichever worker
            again = httpx.post(f"{server.url}/classify", json={"model": name, "texts": ["hello"]},
                               headers={"x-request-id": f"req-{i}"}).json()["version"]
            assert again == answers[i]
        # a version asked for by name is served whatever the rollout says
        assert c.post("/classify", json={"model": name, "texts": ["x"], "version": candidate}).json()["version"] \
            == candidate
        assert c.post(f"/v2/models/{name}/versions/{candidate}/infer", json={"inputs": [
            {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}).json()["model_version"] == candidate
        metrics = c.get("/metrics").text
        assert re.search(rf'modelserve_version_requests_total\{{model="{name}",route="canary",status="200",'
                         rf'version="{candidate}"\}} \d', metrics)
        assert re.search(rf'modelserve_rollout_info\{{mode="canary",model="{name}",role="candidate",'
                         rf'version="{candidate}"\}} 1', metrics)


def _runtime(root: Path, name: str, version: str):
    manifest, vdir = load_version(root, name, version)
    runtime = create_runtime(manifest, vdir, SessionSettings(provider="cpu"))
    runtime.load()
    return runtime


def test_shadow_agreement_equals_an_offline_comparison(candidate_registry, name, tmp_path):
    root, primary, candidate = candidate_registry
    env = {"SERVICE_ADMIN_TOKEN": TOKEN}  # one worker: its /metrics holds every comparison
    texts = TEXTS * 5
    with serve(root, tmp_path / "serve", env=env) as server, server.client() as c:
        resp = c.post(f"/v2/repository/models/{name}/load", headers=ADMIN,
                      json={"parameters": {"version": candidate, "role": "candidate", "mode": "shadow", "share": 1.0}})
        assert resp.status_code == 200, resp.text
        for i in range(0, len(texts), 4):
            answer = c.post("/classify", json={"model": name, "texts": texts[i:i + 4]}).json()
            assert answer["version"] == primary  # the client only ever sees the primary

        def counts() -> dict[str, float]:
            found = re.findall(rf'modelserve_shadow_comparisons_total\{{agreement="(\w+)",candidate="{candidate}",'
                               rf'model="{name}",primary="{primary}"\}} (\S+)', c.get("/metrics").text)
            return {k: float(v) for k, v in found}

        got = _wait_for(lambda: (lambda n: n if sum(n.values()) == len(texts) else None)(counts()), timeout=10)
        calls = re.search(rf'modelserve_batches_total\{{model="{name}",version="{candidate}"\}} (\S+)',
                          c.get("/metrics").text)
    assert got, counts
    # mirrored requests wait (shadow_wait_ms) to share the candidate's model calls
    mirrored = len(range(0, len(texts), 4))
    assert calls and 1 <= float(calls.group(1)) < mirrored, (calls and calls.group(0), mirrored)
    first, second = _runtime(root, name, primary), _runtime(root, name, candidate)
    agree = sum(a["labels"][0]["label"] == b["labels"][0]["label"]
                for a, b in zip(first.predict(texts), second.predict(texts)))
    assert got.get("agree", 0) == agree and got.get("disagree", 0) == len(texts) - agree
