"""Service settings (environment, TOML file, precedence) and serving a pinned version."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from service.settings import ServiceSettings
from service_support import copy_model, names_by_task, serve, smoke_models  # noqa: F401 (fixture)


@pytest.fixture
def clean_env(monkeypatch):
    for key in ("MODEL_REGISTRY", "SERVICE_CONFIG_FILE", "SERVICE_PINS", "SERVICE_THREADS", "SERVICE_WORKERS",
                "SERVICE_PROVIDER", "SERVICE_VARIANT", "SERVICE_DEFAULT_BATCH__MAX_WAIT_MS", "SERVICE_MODELS",
                "SERVICE_CUDA_CONV_ALGO_SEARCH"):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_defaults_and_threads_per_worker(clean_env):
    s = ServiceSettings()
    assert s.registry == Path("exported") and s.provider == "auto" and s.variant == "fp32"
    assert s.intra_op_threads() >= 1
    clean_env.setenv("SERVICE_WORKERS", "64")
    assert ServiceSettings().intra_op_threads() == 1  # never 0 threads, whatever the worker count
    clean_env.setenv("SERVICE_THREADS", "3")
    assert ServiceSettings().session_settings().intra_op_threads == 3


def test_environment_sets_registry_pins_nested_batch_and_models(clean_env, tmp_path):
    clean_env.setenv("MODEL_REGISTRY", str(tmp_path))
    clean_env.setenv("SERVICE_PINS", '{"sentiment": "20260101-000000"}')
    clean_env.setenv("SERVICE_DEFAULT_BATCH__MAX_WAIT_MS", "7.5")
    clean_env.setenv("SERVICE_MODELS", '["sentiment", "fashion"]')
    clean_env.setenv("SERVICE_PROVIDER", "cpu")
    clean_env.setenv("SERVICE_VARIANT", "int8")
    s = ServiceSettings()
    assert s.registry == tmp_path and s.pins == {"sentiment": "20260101-000000"}
    assert s.batch_for("anything").max_wait_ms == 7.5 and s.models == ["sentiment", "fashion"]
    assert s.session_settings().provider == "cpu" and s.session_settings().variant == "int8"


def test_toml_file_with_environment_taking_precedence(clean_env, tmp_path):
    config = tmp_path / "service.toml"
    config.write_text('provider = "cpu"\nmax_items_per_request = 8\n[pins]\nfashion = "v1"\n'
                      '[batch.fashion]\nmax_batch_size = 4\n')
    clean_env.setenv("SERVICE_CONFIG_FILE", str(config))
    clean_env.setenv("SERVICE_PROVIDER", "auto")
    s = ServiceSettings()
    assert s.provider == "auto"  # environment wins over the file
    assert s.max_items_per_request == 8 and s.pins == {"fashion": "v1"}
    assert s.batch_for("fashion").max_batch_size == 4 and s.batch_for("other").max_batch_size == 32


def test_cuda_provider_entry_carries_the_conv_algorithm_search(clean_env):
    """Where onnxruntime offers CUDA, the session asks for it with the configured cuDNN algorithm search
    (HEURISTIC unless told otherwise); forced CPU asks for CPU alone."""
    import onnxruntime

    clean_env.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert ServiceSettings().session_settings().providers() == [
        ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"}), "CPUExecutionProvider"]
    clean_env.setenv("SERVICE_CUDA_CONV_ALGO_SEARCH", "EXHAUSTIVE")
    clean_env.setenv("SERVICE_VARIANT", "auto")
    model = type("Manifest", (), {"variants": lambda self: ["fp32", "int8"]})()
    on_gpu = ServiceSettings().session_settings()
    assert on_gpu.providers()[0] == ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "EXHAUSTIVE"})
    assert on_gpu.variant_for(model) == "fp32"  # auto: int8 only on CPU
    clean_env.setenv("SERVICE_PROVIDER", "cpu")
    assert ServiceSettings().session_settings().providers() == ["CPUExecutionProvider"]
    assert ServiceSettings().session_settings().variant_for(model) == "int8"
    clean_env.setenv("SERVICE_CUDA_CONV_ALGO_SEARCH", "FASTEST")
    with pytest.raises(ValueError, match="cuda_conv_algo_search"):
        ServiceSettings()


def test_invalid_setting_is_refused(clean_env):
    clean_env.setenv("SERVICE_PROVIDER", "tpu")
    with pytest.raises(ValueError, match="provider"):
        ServiceSettings()


def test_pinned_version_is_served_instead_of_latest(smoke_models: Path, tmp_path):
    name = names_by_task(smoke_models)["text-classification"]
    root = tmp_path / "registry"
    newest = copy_model(smoke_models, name, root)
    pinned = "20000101-000000"
    older = root / name / pinned
    shutil.copytree(newest, older)
    manifest = json.loads((older / "manifest.json").read_text())
    manifest["version"] = pinned
    (older / "manifest.json").write_text(json.dumps(manifest))
    with serve(root, tmp_path / "serve", env={"SERVICE_PINS": json.dumps({name: pinned})}) as server:
        with server.client() as c:
            models = {m["name"]: m for m in c.get("/models").json()["models"]}
            assert models[name]["version"] == pinned and "source" not in models[name]  # no server paths
            assert c.post("/classify", json={"model": name, "texts": ["hello"]}).json()["version"] == pinned


def test_int8_variant_is_served_when_configured(smoke_models: Path, tmp_path):
    with serve(smoke_models, tmp_path / "serve", env={"SERVICE_VARIANT": "int8", "SERVICE_EVENT_LOOP": "uvloop"}
               ) as server:
        with server.client() as c:
            models = c.get("/models").json()["models"]
            assert models and all(m["status"] == "ready" and m["variant"] == "int8" for m in models), models
            name = names_by_task(smoke_models)["text-classification"]
            assert c.post("/classify", json={"model": name, "texts": ["hello"]}).status_code == 200
        assert "event loop: uvloop.Loop (SERVICE_EVENT_LOOP=uvloop)" in server.log()


def test_workers_run_the_stdlib_event_loop_by_default(smoke_models: Path, tmp_path):
    with serve(smoke_models, tmp_path / "serve") as server:
        with server.client() as c:
            name = names_by_task(smoke_models)["text-classification"]
            assert c.post("/classify", json={"model": name, "texts": ["hello"]}).status_code == 200
        assert "event loop: asyncio.unix_events._UnixSelectorEventLoop (SERVICE_EVENT_LOOP=asyncio)" in server.log()


def test_forcing_cuda_without_a_gpu_fails_every_model_and_readiness(smoke_models: Path, tmp_path):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA: forcing it succeeds")
    with serve(smoke_models, tmp_path / "serve", env={"SERVICE_PROVIDER": "cuda"}, wait_path="/livez") as server:
        with server.client() as c:
            assert c.get("/readyz").status_code == 503
            models = c.get("/models").json()["models"]
            assert models and all(m["status"] == "failed" and "provider=cuda" in m["reason"] for m in models)
            name = names_by_task(smoke_models)["text-classification"]
            assert c.post("/classify", json={"model": name, "texts": ["hello"]}).status_code == 503


def test_metrics_route_serves_both_ways_and_scrapes_are_not_client_traffic(smoke_models, tmp_path):
    """Default: the app's /metrics (no bentoml_* request series); SERVICE_BENTOML_METRICS=true: BentoML's
    route, which also carries the modelserve_* series. Neither counts the scrape as a request."""
    name = names_by_task(smoke_models)["text-classification"]
    for bentoml_metrics in ("false", "true"):
        env = {"SERVICE_BENTOML_METRICS": bentoml_metrics, "SERVICE_MODELS": json.dumps([name])}
        with serve(smoke_models, tmp_path / f"serve-{bentoml_metrics}", env=env) as server, server.client() as c:
            assert c.post("/classify", json={"model": name, "texts": ["fine"]}).status_code == 200
            c.get("/metrics")
            text = c.get("/metrics").text
        assert 'modelserve_requests_total{endpoint="/classify",protocol="json",status="200"} 1.0' in text
        assert 'endpoint="other"' not in text.split("modelserve_requests_total", 1)[1].split("# HELP", 1)[0]
        assert ("bentoml_service_request_total" in text) == (bentoml_metrics == "true")
