"""The real service (``bentoml serve`` subprocess) over smoke-preset models: endpoints, errors, failure isolation."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

from modelkit.image import encode_png
from modelkit.registry import file_entries
from service_support import copy_model, model_graph, names_by_task, serve, smoke_models  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def registry(smoke_models: Path, tmp_path_factory) -> Path:
    """The smoke models plus four broken ones: corrupt graph, missing file, invalid manifest, unloadable graph."""
    root = tmp_path_factory.mktemp("service_registry")
    smoke_registry = smoke_models
    for latest in smoke_registry.glob("*/LATEST"):
        copy_model(smoke_registry, latest.parent.name, root)
    text = names_by_task(smoke_registry)["text-classification"]

    corrupt = copy_model(smoke_registry, text, root, "broken-checksum")
    graph = model_graph(corrupt)
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))

    missing = copy_model(smoke_registry, text, root, "broken-missing")
    manifest = json.loads((missing / "manifest.json").read_text())
    (missing / manifest["preprocessing"]["tokenizer_file"]).unlink()

    invalid = copy_model(smoke_registry, text, root, "broken-manifest")
    manifest = json.loads((invalid / "manifest.json").read_text())
    manifest["task"] = "summarization"
    (invalid / "manifest.json").write_text(json.dumps(manifest))

    # checksums match, but the graph is not ONNX: only onnxruntime can tell
    garbage = copy_model(smoke_registry, text, root, "broken-graph")
    model_graph(garbage).write_bytes(b"this is not an onnx graph" * 100)
    manifest = json.loads((garbage / "manifest.json").read_text())
    manifest["files"] = [e.model_dump() for e in file_entries(garbage)]
    (garbage / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def tasks(smoke_models: Path) -> dict[str, str]:
    return names_by_task(smoke_models)


@pytest.fixture(scope="module")
def server(registry: Path, tmp_path_factory):
    with serve(registry, tmp_path_factory.mktemp("serve_api")) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


def _png(value: int = 128, size: int = 28) -> bytes:
    return encode_png(np.full((size, size), value, dtype=np.uint8))


def _assert_error(resp, status: int, field: str | None = None, limit=...) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["status"] == status and err["message"]
    if field is not None:
        assert err["field"] == field, err
    if limit is not ...:
        assert err["limit"] == limit, err
    return err


# ---- model listing and health ---------------------------------------------------------------


def test_models_lists_ready_and_failed_models(client, smoke_models):
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    for latest in smoke_models.glob("*/LATEST"):
        m = models[latest.parent.name]
        assert m["status"] == "ready", m
        assert m["version"] == latest.read_text().strip()
        assert m["provider"] == "CPUExecutionProvider" and m["variant"] == "fp32"
        assert m["metrics"] and m["task"]
    assert "checksum mismatch" in models["broken-checksum"]["reason"]
    assert "file missing" in models["broken-missing"]["reason"]
    assert "invalid manifest" in models["broken-manifest"]["reason"]
    assert models["broken-graph"]["reason"]  # onnxruntime's load error, whatever its wording
    for name in ("broken-checksum", "broken-missing", "broken-manifest", "broken-graph"):
        assert models[name]["status"] == "failed"


def test_health_endpoints_and_load_log(client, server):
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200
    log = server.log()
    assert re.search(r"model \S+ version \S+ \(text-classification\) loaded from \S+ on CPUExecutionProvider", log)
    assert "broken-checksum" in log and "FAILED to load" in log


def test_openapi_has_endpoints_with_examples(client):
    spec = client.get("/docs.json").json()
    for path in ("/models", "/classify", "/translate", "/classify_image"):
        assert path in spec["paths"], sorted(spec["paths"])
    body = json.dumps(spec)
    assert "what a lovely day" in body and "Das Haus ist klein." in body
    # every model an example names is one the service serves (a schema-driven client must not get 404)
    served = {m["name"] for m in client.get("/models").json()["models"]}
    named = set(re.findall(r'"model": "([^"]+)"', body))
    assert named and named <= served, named - served


def test_models_errors_and_docs_disclose_no_paths_versions_or_tracebacks(client, registry):
    """Failed-model reasons name files relative to the registry; the OpenAPI page names no library."""
    import bentoml
    import onnxruntime

    answers = [client.get("/models").text, client.post("/classify", json={"model": "broken-checksum",
                                                                           "texts": ["x"]}).text,
               client.post("/classify", json={"model": "broken-graph", "texts": ["x"]}).text,
               client.get("/v2/models/broken-missing/ready").text, client.get("/docs.json").text,
               client.get("/no-such-path").text]
    for text in answers:
        assert str(registry) not in text and str(registry.resolve()) not in text
        assert "Traceback" not in text and "site-packages" not in text
        assert f"BentoML-{bentoml.__version__}" not in text and "contact@bentoml.com" not in text
    assert f"onnxruntime {onnxruntime.__version__}" not in answers[0]
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert "broken-checksum/" in models["broken-checksum"]["reason"]  # the file, relative to the registry
    assert "source" not in models["broken-checksum"]


# ---- happy paths ----------------------------------------------------------------------------


def test_classify_single_label_top_k(client, tasks, registry):
    name = tasks["text-classification"]
    labels = json.loads((registry / name / (registry / name / "LATEST").read_text().strip() / "manifest.json")
                        .read_text())["labels"]
    resp = client.post("/classify", json={"model": name, "texts": ["I love it", "worst service ever"], "top_k": 2})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"] == name and len(body["results"]) == 2
    for result in body["results"]:
        scores = [lab["score"] for lab in result["labels"]]
        assert len(scores) == 2 and scores == sorted(scores, reverse=True)
        assert {lab["label"] for lab in result["labels"]} <= set(labels)
    default = client.post("/classify", json={"model": name, "texts": ["I love it"]}).json()
    assert len(default["results"][0]["labels"]) == 1


def _offline_runtime(registry: Path, name: str):
    """The model's runtime loaded in the test process: what the service should answer."""
    from modelkit.onnx_session import SessionSettings
    from modelkit.registry import load_version
    from modelkit.runtimes import create_runtime

    manifest, vdir = load_version(registry, name)
    runtime = create_runtime(manifest, vdir, SessionSettings(provider="cpu"))
    runtime.load()
    return runtime


def test_classify_multi_label_returns_labels_above_threshold(client, tasks, registry):
    name = tasks["multi-label-classification"]
    texts = ["a library to parse XML files in C", "GTK theme for the desktop", "command line tool"]
    resp = client.post("/classify", json={"model": name, "texts": texts})
    assert resp.status_code == 200, resp.text
    runtime = _offline_runtime(registry, name)
    thresholds = runtime.thresholds
    for text, result in zip(texts, resp.json()["results"]):
        scores = runtime.predict([text])[0]["scores"]
        expected = [lab for i, lab in enumerate(runtime.labels) if scores[lab] >= thresholds[i]]
        got = [lab["label"] for lab in result["labels"]]
        assert sorted(got) == sorted(expected)  # exactly the labels at or above their own threshold
        served = [lab["score"] for lab in result["labels"]]
        assert served == sorted(served, reverse=True)  # best first
        for lab in result["labels"]:  # the service batches, the offline check does not: equal within 1e-6
            assert abs(lab["score"] - scores[lab["label"]]) < 1e-6


def test_translate(client, tasks, registry):
    name = tasks["translation"]
    texts = ["Das Haus ist klein.", "Guten Morgen."]
    resp = client.post("/translate", json={"model": name, "texts": texts, "num_beams": 2, "max_new_tokens": 8})
    assert resp.status_code == 200, resp.text
    got = [r["translation"] for r in resp.json()["results"]]
    runtime = _offline_runtime(registry, name)
    expected = [r["translation"] for r in runtime.predict(texts, num_beams=2, max_new_tokens=8)]
    assert got == expected and all(t.strip() for t in got), got


def test_classify_image_multipart_and_base64_agree(client, tasks):
    name = tasks["image-classification"]
    png = _png(200)
    multipart = client.post("/classify_image", data={"model": name, "top_k": "3"},
                            files=[("images", ("a.png", png, "image/png")), ("images", ("b.png", _png(10), "image/png"))])
    assert multipart.status_code == 200, multipart.text
    as_json = client.post("/classify_image", json={"model": name, "top_k": 3,
                                                   "images": [base64.b64encode(png).decode()]})
    assert as_json.status_code == 200, as_json.text
    assert len(multipart.json()["results"]) == 2
    assert len(multipart.json()["results"][0]["labels"]) == 3
    assert multipart.json()["results"][0] == as_json.json()["results"][0]


def test_metrics_record_requests_batches_errors_and_drift(client, tasks):
    client.post("/classify", json={"model": tasks["text-classification"], "texts": ["fine"]})
    client.post("/classify", json={"model": "no-such-model", "texts": ["fine"]})
    text = client.get("/metrics").text
    name = tasks["text-classification"]
    assert re.search(r'modelserve_requests_total\{endpoint="/classify",protocol="json",status="200"\} [1-9]', text)
    assert re.search(rf'modelserve_batch_size_rows_count\{{model="{name}",version="[^"]+"\}} [1-9]', text)
    assert re.search(rf'modelserve_drift_bin_total\{{bin="[^"]+",feature="token_count",model="{name}"', text)
    assert re.search(r'modelserve_model_info\{[^}]*model="broken-checksum"[^}]*status="failed"[^}]*\} 1', text)
    image = tasks["image-classification"]

    def pixels_seen() -> tuple[float, float]:
        text = client.get("/metrics").text
        found = [re.search(rf'modelserve_input_size_{part}\{{kind="pixels",model="{image}",version="[^"]+"\}} (\S+)', text)
                 for part in ("count", "sum")]
        return tuple(float(f.group(1)) if f else 0.0 for f in found)

    before = pixels_seen()
    assert client.post("/classify_image", json={"model": image, "images": [base64.b64encode(_png(size=40)).decode()]}
                       ).status_code == 200
    after = pixels_seen()
    # the pixels the image arrived with (40 x 40), whatever size the model resizes it to
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1600)
    assert re.search(r'modelserve_errors_total\{endpoint="/classify",kind="not_found",model="no-such-model",'
                     r'protocol="json"\} [1-9]', text)


# ---- bad input ------------------------------------------------------------------------------


def test_unknown_model_is_404_listing_known_models(client, tasks):
    err = _assert_error(client.post("/classify", json={"model": "nope", "texts": ["x"]}), 404, "model")
    assert tasks["text-classification"] in err["known_models"]


@pytest.mark.parametrize("endpoint,task", [("/classify", "image-classification"), ("/translate", "text-classification"),
                                           ("/classify", "translation")])
def test_wrong_task_is_422(client, tasks, endpoint, task):
    body = {"model": tasks[task], "texts": ["x"]}
    err = _assert_error(client.post(endpoint, json=body), 422, "model")
    assert isinstance(err["limit"], list)


def test_wrong_task_for_image_endpoint_is_422(client, tasks):
    resp = client.post("/classify_image", json={"model": tasks["text-classification"],
                                                "images": [base64.b64encode(_png()).decode()]})
    _assert_error(resp, 422, "model")


def test_failed_model_is_503_naming_the_reason(client):
    err = _assert_error(client.post("/classify", json={"model": "broken-checksum", "texts": ["x"]}), 503, "model")
    assert "checksum mismatch" in err["message"] and "checksum mismatch" in err["reason"]


@pytest.mark.parametrize("endpoint", ["/classify", "/translate"])
def test_empty_list_is_422(client, tasks, endpoint):
    model = tasks["translation" if endpoint == "/translate" else "text-classification"]
    _assert_error(client.post(endpoint, json={"model": model, "texts": []}), 422, "texts", 1)


def test_empty_image_list_is_422(client, tasks):
    _assert_error(client.post("/classify_image", json={"model": tasks["image-classification"], "images": []}),
                  422, "images", 1)


def test_too_many_items_is_413(client, tasks):
    resp = client.post("/classify", json={"model": tasks["text-classification"], "texts": ["a"] * 65})
    _assert_error(resp, 413, "texts", 64)


def test_text_too_long_names_the_item_and_limit(client, tasks):
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    name = tasks["text-classification"]
    limit = models[name]["limits"]["max_text_chars"]
    resp = client.post("/classify", json={"model": name, "texts": ["ok", "x" * (limit + 1)]})
    _assert_error(resp, 422, "texts[1]", limit)
    tname = tasks["translation"]
    tlimit = models[tname]["limits"]["max_text_chars"]
    _assert_error(client.post("/translate", json={"model": tname, "texts": ["y" * (tlimit + 1)]}), 422, "texts[0]", tlimit)


def test_top_k_out_of_range_is_422(client, tasks):
    name = tasks["text-classification"]
    n = len({m["name"]: m for m in client.get("/models").json()["models"]}[name]["labels"])
    _assert_error(client.post("/classify", json={"model": name, "texts": ["a"], "top_k": n + 1}), 422, "top_k", n)
    _assert_error(client.post("/classify", json={"model": name, "texts": ["a"], "top_k": 0}), 422, "top_k", 1)


@pytest.mark.parametrize("field,value,limit_key", [("num_beams", 99, "max_num_beams"),
                                                   ("max_new_tokens", 100000, "max_max_new_tokens"),
                                                   ("num_beams", 0, None), ("max_new_tokens", 0, None)])
def test_generation_options_out_of_range_are_422(client, tasks, field, value, limit_key):
    name = tasks["translation"]
    limits = {m["name"]: m for m in client.get("/models").json()["models"]}[name]["limits"]
    resp = client.post("/translate", json={"model": name, "texts": ["Hallo."], field: value})
    _assert_error(resp, 422, field, limits[limit_key] if limit_key else 1)


def test_image_too_many_pixels_is_413(client, tasks):
    big = encode_png(np.zeros((4100, 4100), dtype=np.uint8))  # compresses to little, decodes to 16.8M pixels
    resp = client.post("/classify_image", files={"images": ("big.png", big, "image/png")},
                       data={"model": tasks["image-classification"]})
    err = _assert_error(resp, 413, "images[0]")
    assert err["limit"] == {m["name"]: m for m in client.get("/models").json()["models"]}[
        tasks["image-classification"]]["limits"]["max_pixels"]


def test_image_too_many_bytes_is_413(client, tasks):
    name = tasks["image-classification"]
    max_bytes = {m["name"]: m for m in client.get("/models").json()["models"]}[name]["limits"]["max_bytes"]
    blob = _png() + b"\0" * max_bytes
    resp = client.post("/classify_image", files={"images": ("big.png", blob, "image/png")}, data={"model": name})
    _assert_error(resp, 413, "images[0]", max_bytes)


def test_not_an_image_is_415(client, tasks):
    resp = client.post("/classify_image", files={"images": ("a.png", b"GIF? no, just text", "image/png")},
                       data={"model": tasks["image-classification"]})
    _assert_error(resp, 415, "images[0]")


def test_upload_with_non_image_content_type_is_415(client, tasks):
    resp = client.post("/classify_image", files={"images": ("a.txt", _png(), "text/plain")},
                       data={"model": tasks["image-classification"]})
    _assert_error(resp, 415, "images[0]", "image/*")


def test_bad_base64_is_422(client, tasks):
    resp = client.post("/classify_image", json={"model": tasks["image-classification"], "images": ["%%%not base64"]})
    _assert_error(resp, 422, "images[0]")


@pytest.mark.parametrize("endpoint", ["/classify", "/translate", "/classify_image"])
def test_wrong_content_type_is_415(client, endpoint):
    resp = client.post(endpoint, content=b"model=x", headers={"content-type": "text/plain"})
    _assert_error(resp, 415, "content-type")


def test_malformed_json_is_422(client):
    resp = client.post("/classify", content=b'{"model": "x", "texts": [', headers={"content-type": "application/json"})
    _assert_error(resp, 422, "body")


def test_unknown_field_is_422(client, tasks):
    resp = client.post("/classify", json={"model": tasks["text-classification"], "texts": ["a"], "tpo_k": 2})
    _assert_error(resp, 422, "tpo_k")


def test_client_errors_are_logged_as_one_line_without_traceback(client, server):
    marker = "marker-model-for-log-check"
    client.post("/classify", json={"model": marker, "texts": ["x"]})
    log = server.log()
    lines = [line for line in log.splitlines() if marker in line]
    assert len(lines) == 1 and "404" in lines[0], lines
    assert "Traceback" not in log


@pytest.mark.parametrize("count", [65, 80])
def test_too_many_uploaded_images_is_413(client, tasks, count):
    files = [("images", (f"{i}.png", _png(i), "image/png")) for i in range(count)]
    resp = client.post("/classify_image", files=files, data={"model": tasks["image-classification"]})
    _assert_error(resp, 413, "images", 64)
