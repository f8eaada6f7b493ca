"""API keys and rate limits through every door of the real service, with two workers.

The key table, the token buckets and the CLI are also checked in-process; the doors are the task
JSON API (httpx), the Open Inference Protocol over REST (tritonclient.http) and over gRPC
(tritonclient.grpc, plus its raw stub where the trailing metadata matters).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import grpc as grpclib
import httpx
import numpy as np
import psutil
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from service import auth
from service.errors import ServiceError
from service.limits import RateLimiter, take
from service.settings import AuthSettings
from service_support import ROOT, names_by_task, serve, smoke_models  # noqa: F401 (fixture)

# ---- in-process: the key table, the buckets, the CLI -------------------------------------------------


def _entry(name: str, key: str, **kw) -> dict:
    return {"name": name, "sha256": auth.hash_key(key), **kw}


def test_keys_are_matched_by_hash_and_scopes_and_models_are_enforced():
    infer_key, admin_key = auth.new_key(), auth.new_key()
    table = auth.Auth([auth.KeyEntry(**_entry("team", infer_key, scopes=["infer"], models=["a"])),
                       auth.KeyEntry(**_entry("ops", admin_key, scopes=["admin"]))])
    assert len(infer_key) >= 40 and infer_key.startswith("msk_")
    assert table.identify(infer_key).name == "team" and table.identify(admin_key).name == "ops"
    assert table.identify(infer_key + "x") is None and table.identify("") is None
    for headers in ({"authorization": f"Bearer {infer_key}"}, {"x-api-key": infer_key},
                    {"authorization": f"bearer  {infer_key} "}):
        assert auth.require(table, headers, "infer", "a").name == "team"
    cases = [({}, 401), ({"authorization": f"Basic {infer_key}"}, 401), ({"x-api-key": "msk_wrong"}, 401),
             ({"x-api-key": admin_key}, 403)]
    for headers, status in cases:
        with pytest.raises(ServiceError) as err:
            auth.require(table, headers, "infer")
        assert err.value.status == status
        assert infer_key not in err.value.message and admin_key not in err.value.message
        if status == 401:
            assert err.value.http_headers()["WWW-Authenticate"].startswith("Bearer")
    with pytest.raises(ServiceError) as err:
        auth.require(table, {"x-api-key": infer_key}, "infer", model="b")
    assert err.value.status == 403 and err.value.field == "model" and err.value.limit == ["a"]
    assert auth.require(table, {"x-api-key": admin_key}, "admin").name == "ops"
    assert auth.require(None, {}, "admin") is None  # auth off


def test_bad_key_files_fail_start_up_without_echoing_values(tmp_path):
    secret_hash = "ab" * 32
    bad = [{"keys": []}, {"keys": [{"name": "x", "sha256": "nothex", "scopes": ["infer"]}]},
           {"keys": [{"name": "x", "sha256": secret_hash, "scopes": ["root"]}]},
           {"keys": [{"name": "x", "sha256": secret_hash, "scopes": ["infer"]}] * 2}]
    for doc in bad:
        with pytest.raises(ValueError) as err:
            auth.Auth.from_settings(AuthSettings(enabled=True, keys=json.dumps(doc)))
        assert secret_hash not in str(err.value) and "nothex" not in str(err.value)
    with pytest.raises(ValueError, match="KEYS_FILE"):
        auth.Auth.from_settings(AuthSettings(enabled=True))
    assert auth.Auth.from_settings(AuthSettings()) is None


def test_cli_makes_a_key_whose_entry_validates(tmp_path):
    run = [sys.executable, "-m", "service.auth"]
    out = subprocess.run([*run, "new", "--name", "team-a", "--scopes", "infer", "--models", "sentiment,topics"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout.splitlines()
    key, entry = out[0], json.loads(out[1])
    assert entry == {"name": "team-a", "sha256": auth.hash_key(key), "scopes": ["infer"],
                     "models": ["sentiment", "topics"]}
    assert subprocess.run([*run, "hash"], input=key + "\n", cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip() == entry["sha256"]
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": [entry]}))
    assert subprocess.run([*run, "check", keys], cwd=ROOT, capture_output=True, text=True).returncode == 0
    keys.write_text(json.dumps({"keys": [{**entry, "scopes": ["everything"]}]}))
    assert subprocess.run([*run, "check", keys], cwd=ROOT, capture_output=True, text=True).returncode == 2
    bad = subprocess.run([*run, "new", "--name", "x", "--scopes", "root"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and not bad.stdout


def test_token_bucket_arithmetic():
    tokens, stamp, wait = take(0.0, 0.0, 0.25, rate=2.0, burst=3.0)  # half a token refilled
    assert wait == pytest.approx(0.25) and tokens == pytest.approx(0.5)
    tokens, stamp, wait = take(0.0, 0.0, 10.0, rate=2.0, burst=3.0)  # refill stops at the burst
    assert wait == 0 and tokens == pytest.approx(2.0)


def test_buckets_are_shared_through_the_table_file(tmp_path):
    """Two limiters on one file (two workers) share each caller's bucket; callers do not share."""
    now = [100.0]
    path = tmp_path / "buckets.bin"
    first = RateLimiter(1.0, 3.0, slots=64, path=path, clock=lambda: now[0])
    second = RateLimiter(1.0, 3.0, slots=64, path=path, clock=lambda: now[0])

    def admitted(limiter, who, n):
        ok = 0
        for _ in range(n):
            try:
                limiter.admit(who)
                ok += 1
            except ServiceError as err:
                assert err.status == 429 and err.retry_after >= 1
        return ok

    assert admitted(first, "a", 2) + admitted(second, "a", 5) == 3  # one burst, whichever worker
    assert admitted(second, "b", 5) == 3
    now[0] += 2.0
    assert admitted(first, "a", 5) == 2  # two seconds at 1/s
    many = RateLimiter(1.0, 1.0, slots=8, path=tmp_path / "small.bin", clock=lambda: now[0])
    assert sum(admitted(many, f"c{i}", 1) for i in range(50)) == 50  # a full table reuses stale slots


# ---- the real service: every door, two workers -------------------------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, str]:
    return {name: auth.new_key() for name in ("team", "ops", "narrow", "slow")}


@pytest.fixture(scope="module")
def text_model(smoke_models: Path) -> str:
    return names_by_task(smoke_models)["text-classification"]


@pytest.fixture(scope="module")
def server(smoke_models: Path, keys, text_model, tmp_path_factory):
    """Auth on, two workers; ``slow`` has its own rate limit (0.5/s, burst 4), the others none."""
    other = names_by_task(smoke_models)["multi-label-classification"]
    entries = [_entry("team", keys["team"], scopes=["infer"]), _entry("ops", keys["ops"], scopes=["admin"]),
               _entry("narrow", keys["narrow"], scopes=["infer"], models=[other]),
               _entry("slow", keys["slow"], scopes=["infer"], rate=0.5, burst=4)]
    folder = tmp_path_factory.mktemp("auth")
    key_file = folder / "keys.json"
    key_file.write_text(json.dumps({"keys": entries}))
    env = {"SERVICE_WORKERS": "2", "SERVICE_AUTH__ENABLED": "true", "SERVICE_AUTH__KEYS_FILE": str(key_file),
           "SERVICE_MODELS": json.dumps([text_model, other])}
    with serve(smoke_models, folder / "serve", env=env) as srv:
        workers = psutil.Process(srv.proc.pid).children(recursive=True)
        assert sum("_bentoml_impl.worker" in " ".join(p.cmdline()) for p in workers) == 2
        yield srv


def _text(module, texts=("what a lovely day",)):
    tensor = module.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
    return tensor


def _json(server, key: str | None, model: str, header: str = "bearer") -> httpx.Response:
    headers = {} if key is None else {"authorization": f"Bearer {key}"} if header == "bearer" else {"x-api-key": key}
    return httpx.post(f"{server.url}/classify", json={"model": model, "texts": ["a fine day"]}, headers=headers,
                      timeout=30)


def _rest(server, key: str | None, model: str):
    client = thttp.InferenceServerClient(server.http_address)
    try:
        return client.infer(model, [_text(thttp)], headers={"x-api-key": key} if key else None)
    finally:
        client.close()


def _grpc(server, key: str | None, model: str):
    client = tgrpc.InferenceServerClient(server.grpc_address)
    try:
        return client.infer(model, [_text(tgrpc)], headers={"authorization": f"Bearer {key}"} if key else None)
    finally:
        client.close()


def _status(call) -> str:
    try:
        call()
    except InferenceServerException as exc:
        return exc.status()
    return "ok"


def test_every_door_wants_a_valid_key_with_the_infer_scope(server, keys, text_model):
    assert _json(server, keys["team"], text_model).status_code == 200
    assert _json(server, keys["team"], text_model, header="x-api-key").status_code == 200
    assert _rest(server, keys["team"], text_model).as_numpy("label").shape == (1,)
    assert _grpc(server, keys["team"], text_model).as_numpy("label").shape == (1,)
    for key, http_status, grpc_status in ((None, 401, "UNAUTHENTICATED"), ("msk_not-a-key", 401, "UNAUTHENTICATED"),
                                          (keys["ops"], 403, "PERMISSION_DENIED")):
        resp = _json(server, key, text_model)
        assert resp.status_code == http_status, resp.text
        assert resp.json()["error"]["field"] == "authorization"
        assert _status(lambda k=key: _rest(server, k, text_model)) == str(http_status)
        assert _status(lambda k=key: _grpc(server, k, text_model)) == f"StatusCode.{grpc_status}"
    assert _json(server, None, text_model).headers["www-authenticate"].startswith("Bearer")


def test_a_key_limited_to_some_models_gets_403_for_the_others(server, keys, text_model):
    resp = _json(server, keys["narrow"], text_model)
    assert resp.status_code == 403 and resp.json()["error"]["field"] == "model"
    assert _status(lambda: _rest(server, keys["narrow"], text_model)) == "403"
    assert _status(lambda: _grpc(server, keys["narrow"], text_model)) == "StatusCode.PERMISSION_DENIED"


def test_probes_metrics_and_docs_stay_open_and_metadata_does_not(server):
    for path in ("/livez", "/readyz", "/v2/health/live", "/v2/health/ready", "/metrics", "/docs.json"):
        assert httpx.get(server.url + path, timeout=30).status_code == 200, path
    for path in ("/models", "/v2", "/v2/models/x", "/no-such-path"):
        assert httpx.get(server.url + path, timeout=30).status_code == 401, path
    client = tgrpc.InferenceServerClient(server.grpc_address)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert _status(client.get_server_metadata) == "StatusCode.UNAUTHENTICATED"
    finally:
        client.close()


def test_the_repository_api_wants_the_admin_scope(server, keys, text_model):
    """With keys on, /v2/repository/... takes a key with the admin scope (no SERVICE_ADMIN_TOKEN needed)."""
    url = f"{server.url}/v2/repository/index"
    assert httpx.post(url, timeout=30).status_code == 401
    assert httpx.post(url, headers={"x-api-key": keys["team"]}, timeout=30).status_code == 403
    resp = httpx.post(url, headers={"authorization": f"Bearer {keys['ops']}"}, timeout=30)
    assert resp.status_code == 200, resp.text
    assert text_model in {row["name"] for row in resp.json()}


def test_keys_never_reach_the_log_or_an_answer(server, keys, text_model):
    resp = _json(server, keys["ops"], text_model)
    bad = "msk_" + "z" * 43
    answers = resp.text + _json(server, bad, text_model).text
    log = server.log()
    for key in [*keys.values(), bad]:
        assert key not in log and key not in answers
    assert "lacks the 'infer' scope" in log  # the refusal is logged, by key name


def test_rate_limit_per_key_is_shared_by_workers_and_doors(server, keys, text_model):
    """``slow``: 0.5/s, burst 4. Fresh connections through three doors land on both workers; together
    they admit the burst plus what refilled, and refuse the rest with 429 / RESOURCE_EXHAUSTED and
    Retry-After."""
    t0 = time.monotonic()
    outcomes = []
    channel = grpclib.insecure_channel(server.grpc_address)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    request = pb.ModelInferRequest(model_name=text_model, inputs=[
        pb.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[1],
                                              contents=pb.InferTensorContents(bytes_contents=[b"hello"]))])
    for i in range(12):
        door = ("json", "rest", "grpc")[i % 3]
        if door == "json":
            resp = _json(server, keys["slow"], text_model)
            outcomes.append((door, resp.status_code, resp.headers.get("retry-after")))
        elif door == "rest":
            outcomes.append((door, _status(lambda: _rest(server, keys["slow"], text_model)), None))
        else:
            try:
                stub.ModelInfer(request, metadata=[("x-api-key", keys["slow"])], timeout=30)
                outcomes.append((door, "ok", None))
            except grpclib.RpcError as err:
                trailers = dict(err.trailing_metadata() or ())
                outcomes.append((door, err.code().name, trailers.get("retry-after")))
    elapsed = time.monotonic() - t0
    channel.close()
    admitted = [o for o in outcomes if o[1] in (200, "ok")]
    refused = [o for o in outcomes if o not in admitted]
    assert 4 <= len(admitted) <= 4 + 0.5 * elapsed + 1, (outcomes, elapsed)
    assert {o[1] for o in refused} <= {429, "429", "RESOURCE_EXHAUSTED"}, outcomes
    assert all(int(o[2]) >= 1 for o in refused if o[0] != "rest"), outcomes
    # another key is not limited by this one's bucket
    assert _json(server, keys["team"], text_model).status_code == 200


def test_closed_metrics_and_docs_and_limits_per_address_without_auth(smoke_models, keys, text_model, tmp_path):
    """Two workers again. With auth on and both pages closed, /metrics and the OpenAPI page want a key;
    with auth off, the rate limit applies per client address."""
    key_file = tmp_path / "keys.json"
    key_file.write_text(json.dumps({"keys": [_entry("team", keys["team"], scopes=["infer"])]}))
    env = {"SERVICE_WORKERS": "2", "SERVICE_MODELS": json.dumps([text_model]), "SERVICE_AUTH__ENABLED": "true",
           "SERVICE_AUTH__KEYS_FILE": str(key_file), "SERVICE_AUTH__OPEN_METRICS": "false",
           "SERVICE_AUTH__OPEN_DOCS": "false"}
    with serve(smoke_models, tmp_path / "closed", env=env) as srv:
        for path in ("/metrics", "/docs.json"):
            assert httpx.get(srv.url + path, timeout=30).status_code == 401
            assert httpx.get(srv.url + path, headers={"x-api-key": keys["team"]}, timeout=30).status_code == 200
        assert httpx.get(srv.url + "/readyz", timeout=30).status_code == 200
    env = {"SERVICE_WORKERS": "2", "SERVICE_MODELS": json.dumps([text_model]), "SERVICE_RATE_LIMIT__RATE": "0.2",
           "SERVICE_RATE_LIMIT__BURST": "3"}
    with serve(smoke_models, tmp_path / "open", env=env) as srv:
        codes = [_json(srv, None, text_model).status_code for _ in range(8)]
        assert codes.count(200) in (3, 4) and set(codes) == {200, 429}, codes
        assert _status(lambda: _grpc(srv, None, text_model)) == "StatusCode.RESOURCE_EXHAUSTED"
        assert httpx.get(srv.url + "/readyz", timeout=30).status_code == 200  # probes are never limited
