"""The Open Inference Protocol doors (REST and gRPC) of a real ``bentoml serve``, through tritonclient.

tritonclient is the reference client (the one Triton users run), used with its default options: the
binary tensor data extension over HTTP, raw contents over gRPC. Every task's answer is compared
with the JSON API's answer for the same input; every row of the JSON API's error table has its
OIP REST status and gRPC status code checked.
"""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from PIL import Image
from tritonclient.utils import InferenceServerException

from modelkit.image import encode_png
from service_support import copy_model, model_graph, names_by_task, serve, smoke_models  # noqa: F401 (fixture)

TEXTS = ["what a lovely day", "my flight got cancelled again", "a library to parse XML files in C"]


@pytest.fixture(scope="module")
def registry(smoke_models: Path, tmp_path_factory) -> Path:
    """The smoke models plus one whose graph fails its checksum."""
    root = tmp_path_factory.mktemp("oip_registry")
    for latest in smoke_models.glob("*/LATEST"):
        copy_model(smoke_models, latest.parent.name, root)
    broken = copy_model(smoke_models, names_by_task(smoke_models)["text-classification"], root, "broken-checksum")
    graph = model_graph(broken)
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    return root


@pytest.fixture(scope="module")
def tasks(smoke_models: Path) -> dict[str, str]:
    return names_by_task(smoke_models)


@pytest.fixture(scope="module")
def server(registry: Path, tmp_path_factory):
    with serve(registry, tmp_path_factory.mktemp("serve_oip")) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server):
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def rest(server):
    client = thttp.InferenceServerClient(server.http_address)
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc(server):
    client = tgrpc.InferenceServerClient(server.grpc_address)
    yield client
    client.close()


@pytest.fixture(scope="module")
def models(http) -> dict[str, dict]:
    return {m["name"]: m for m in http.get("/models").json()["models"]}


def _text_input(module, texts: list[str], name: str = "text"):
    tensor = module.InferInput(name, [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode("utf-8") for t in texts], dtype=object))
    return tensor


def _png(value: int, size: int = 28) -> bytes:
    rng = np.random.default_rng(value)
    return encode_png(rng.integers(0, 256, (size, size), dtype=np.uint8))


# ---- health and metadata ------------------------------------------------------------------------


def test_health_and_server_metadata(rest, grpc):
    for client in (rest, grpc):
        assert client.is_server_live() and client.is_server_ready()
    meta = rest.get_server_metadata()
    assert meta["name"] == "modelserve" and "binary_tensor_data" in meta["extensions"]
    assert grpc.get_server_metadata(as_json=True)["name"] == "modelserve"


EXPECTED_TENSORS = {
    "text-classification": ({"text": "BYTES"}, {"label": "BYTES", "probabilities": "FP32"}),
    "multi-label-classification": ({"text": "BYTES"}, {"labels": "BYTES", "scores": "FP32"}),
    "translation": ({"text": "BYTES"}, {"translation": "BYTES"}),
    "image-classification": ({"image": "UINT8", "image_bytes": "BYTES"}, {"label": "BYTES", "probabilities": "FP32"}),
}


@pytest.mark.parametrize("task", sorted(EXPECTED_TENSORS))
def test_model_metadata_follows_the_tensor_conventions(rest, grpc, tasks, models, task):
    name = tasks[task]
    version = models[name]["version"]
    inputs, outputs = EXPECTED_TENSORS[task]
    for meta in (rest.get_model_metadata(name), grpc.get_model_metadata(name, as_json=True),
                 rest.get_model_metadata(name, model_version=version)):
        assert meta["name"] == name and meta["versions"] == [version]
        assert {t["name"]: t["datatype"] for t in meta["inputs"]} == inputs
        assert {t["name"]: t["datatype"] for t in meta["outputs"]} == outputs
        shapes = {t["name"]: [int(d) for d in t["shape"]] for t in meta["outputs"]}
        for out in ("probabilities", "scores"):
            if out in shapes:
                assert shapes[out] == [-1, len(models[name]["labels"])]
    if task == "image-classification":
        shape = [int(d) for d in grpc.get_model_metadata(name, as_json=True)["inputs"][0]["shape"]]
        assert shape[0] == -1 and len(shape) == 4


def test_model_readiness(rest, grpc, tasks, models):
    name = tasks["text-classification"]
    for client in (rest, grpc):
        assert client.is_model_ready(name)
        assert client.is_model_ready(name, model_version=models[name]["version"])
        assert not client.is_model_ready("broken-checksum")
    with pytest.raises(InferenceServerException):
        grpc.is_model_ready("no-such-model")
    assert not rest.is_model_ready("no-such-model")


# ---- inference equals the JSON API --------------------------------------------------------------


def test_text_classification_equals_json_api(http, rest, grpc, tasks, models):
    name = tasks["text-classification"]
    labels = models[name]["labels"]
    body = http.post("/classify", json={"model": name, "texts": TEXTS, "top_k": len(labels)}).json()
    expected = [{lab["label"]: lab["score"] for lab in r["labels"]} for r in body["results"]]
    for module, client in ((thttp, rest), (tgrpc, grpc)):
        result = client.infer(name, [_text_input(module, TEXTS)])
        response = result.get_response()
        version = response["model_version"] if module is thttp else response.model_version
        assert version == models[name]["version"]
        assert [x.decode() for x in result.as_numpy("label")] == [r["labels"][0]["label"] for r in body["results"]]
        probs = result.as_numpy("probabilities")
        assert probs.shape == (len(TEXTS), len(labels))
        for row, want in zip(probs, expected):
            assert row.tolist() == pytest.approx([want[lab] for lab in labels], abs=1e-6)


def test_multi_label_equals_json_api_and_respects_thresholds(http, rest, grpc, tasks, smoke_models):
    name = tasks["multi-label-classification"]
    version = (smoke_models / name / "LATEST").read_text().strip()
    manifest = json.loads((smoke_models / name / version / "manifest.json").read_text())
    labels, thresholds = manifest["labels"], manifest["postprocessing"]["thresholds"]
    if len(thresholds) == 1:
        thresholds = thresholds * len(labels)
    body = http.post("/classify", json={"model": name, "texts": TEXTS}).json()
    for module, client in ((thttp, rest), (tgrpc, grpc)):
        result = client.infer(name, [_text_input(module, TEXTS)])
        chosen = [json.loads(x) for x in result.as_numpy("labels")]
        scores = result.as_numpy("scores")
        assert chosen == [[lab["label"] for lab in r["labels"]] for r in body["results"]]
        for row, picked in zip(scores, chosen):
            # exactly the labels at or above their own threshold, best first
            above = [lab for lab, s, t in zip(labels, row, thresholds) if s >= t]
            assert sorted(picked) == sorted(above)
            assert [row[labels.index(p)] for p in picked] == sorted((row[labels.index(p)] for p in picked),
                                                                    reverse=True)


def test_translation_equals_json_api(http, rest, grpc, tasks):
    name = tasks["translation"]
    texts = ["Das Haus ist klein.", "Guten Morgen."]
    body = http.post("/translate", json={"model": name, "texts": texts, "num_beams": 2, "max_new_tokens": 8}).json()
    expected = [r["translation"] for r in body["results"]]
    assert all(expected), "the smoke translator produced an empty translation"
    for module, client in ((thttp, rest), (tgrpc, grpc)):
        result = client.infer(name, [_text_input(module, texts)], parameters={"num_beams": 2, "max_new_tokens": 8})
        assert [x.decode() for x in result.as_numpy("translation")] == expected


def test_image_classification_equals_json_api_for_files_and_pixels(http, rest, grpc, tasks, models):
    name = tasks["image-classification"]
    labels = models[name]["labels"]
    pngs = [_png(1), _png(2)]
    body = http.post("/classify_image", json={"model": name, "top_k": len(labels),
                                              "images": [base64.b64encode(p).decode() for p in pngs]}).json()
    expected = [[{lab["label"]: lab["score"] for lab in r["labels"]}[lab] for lab in labels] for r in body["results"]]
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(p))) for p in pngs])[..., None]
    for module, client in ((thttp, rest), (tgrpc, grpc)):
        files = module.InferInput("image_bytes", [2], "BYTES")
        files.set_data_from_numpy(np.array(pngs, dtype=object))
        raw = module.InferInput("image", list(pixels.shape), "UINT8")
        raw.set_data_from_numpy(pixels)
        for tensor in (files, raw):
            result = client.infer(name, [tensor])
            np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-6)
            assert [x.decode() for x in result.as_numpy("label")] == [r["labels"][0]["label"] for r in body["results"]]


def test_requested_outputs_json_tensors_and_classification_extension(http, rest, grpc, tasks, models):
    name = tasks["text-classification"]
    labels = models[name]["labels"]
    # only the requested output comes back, as JSON when binary_data is False
    only = rest.infer(name, [_text_input(thttp, TEXTS[:1])],
                      outputs=[thttp.InferRequestedOutput("label", binary_data=False)]).get_response()
    assert [o["name"] for o in only["outputs"]] == ["label"] and "data" in only["outputs"][0]
    # a plain JSON request (no binary extension) answers JSON tensors
    plain = http.post(f"/v2/models/{name}/infer", json={"id": "r-1", "inputs": [
        {"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": [[TEXTS[0]]]}]})
    assert plain.status_code == 200 and plain.headers["content-type"].startswith("application/json")
    doc = plain.json()
    assert doc["id"] == "r-1" and doc["model_name"] == name
    probs = next(o for o in doc["outputs"] if o["name"] == "probabilities")
    assert probs["shape"] == [1, len(labels)] and sum(probs["data"]) == pytest.approx(1.0, abs=1e-5)
    # classification extension: top-k "score:index:label", best first, equal to the probabilities
    for module, client in ((thttp, rest), (tgrpc, grpc)):
        result = client.infer(name, [_text_input(module, TEXTS)],
                              outputs=[module.InferRequestedOutput("probabilities", class_count=2)])
        top = result.as_numpy("probabilities")
        assert top.shape == (len(TEXTS), 2)
        full = rest.infer(name, [_text_input(thttp, TEXTS)]).as_numpy("probabilities")
        for row, entries in zip(full, top):
            parsed = [x.decode().split(":") for x in entries]
            idx = [int(p[1]) for p in parsed]
            assert idx == list(np.argsort(-row, kind="stable")[:2])
            assert [p[2] for p in parsed] == [labels[i] for i in idx]
            assert [float(p[0]) for p in parsed] == pytest.approx(row[idx].tolist(), abs=1e-6)


# ---- errors: the JSON API's table, door by door -------------------------------------------------


def _rest_error(call) -> tuple[int, str]:
    with pytest.raises(InferenceServerException) as err:
        call()
    return int(err.value.status()), err.value.message()


def _grpc_error(call) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as err:
        call()
    return err.value.status(), err.value.message()


def _both(name, make_inputs, *, parameters=None, outputs=None):
    """(REST status, message), (gRPC code, message) for the same request through both doors."""
    rest_call = lambda c: c.infer(name, make_inputs(thttp), parameters=parameters,  # noqa: E731
                                  outputs=outputs(thttp) if outputs else None)
    grpc_call = lambda c: c.infer(name, make_inputs(tgrpc), parameters=parameters,  # noqa: E731
                                  outputs=outputs(tgrpc) if outputs else None)
    return rest_call, grpc_call


def _check(rest, grpc, name, make_inputs, status, code, pattern, **kw):
    rest_call, grpc_call = _both(name, make_inputs, **kw)
    got_status, message = _rest_error(lambda: rest_call(rest))
    assert got_status == status and re.search(pattern, message), (got_status, message)
    got_code, message = _grpc_error(lambda: grpc_call(grpc))
    assert got_code == f"StatusCode.{code}" and re.search(pattern, message), (got_code, message)


def test_unknown_model_is_404_and_not_found(rest, grpc):
    _check(rest, grpc, "nope", lambda m: [_text_input(m, ["x"])], 404, "NOT_FOUND", "unknown model 'nope'")


def test_unknown_version_is_404_and_not_found(rest, grpc, tasks):
    name = tasks["text-classification"]
    assert _rest_error(lambda: rest.infer(name, [_text_input(thttp, ["x"])], model_version="1999"))[0] == 404
    assert _grpc_error(lambda: grpc.infer(name, [_text_input(tgrpc, ["x"])], model_version="1999"))[0] == \
        "StatusCode.NOT_FOUND"


def test_input_the_model_does_not_take_is_422(rest, grpc, tasks):
    # the JSON API's "model of the wrong task": here, tensors of another task
    _check(rest, grpc, tasks["image-classification"], lambda m: [_text_input(m, ["x"])], 422, "INVALID_ARGUMENT",
           "has no input 'text'")
    def wrong_type(m):
        t = m.InferInput("text", [1], "INT32")
        t.set_data_from_numpy(np.array([1], dtype=np.int32))
        return [t]
    _check(rest, grpc, tasks["text-classification"], wrong_type, 422, "INVALID_ARGUMENT", "must be BYTES")


def test_failed_model_is_503_and_unavailable(rest, grpc):
    _check(rest, grpc, "broken-checksum", lambda m: [_text_input(m, ["x"])], 503, "UNAVAILABLE",
           "failed to load.*checksum mismatch")


def test_empty_and_too_many_items(rest, grpc, tasks, models):
    name = tasks["text-classification"]
    limit = models[name]["limits"]["max_items_per_request"]
    _check(rest, grpc, name, lambda m: [_text_input(m, [])], 422, "INVALID_ARGUMENT", "text is empty")
    _check(rest, grpc, name, lambda m: [_text_input(m, ["a"] * (limit + 1))], 413, "RESOURCE_EXHAUSTED",
           f"limit {limit}")


def test_text_too_long_names_the_element(rest, grpc, tasks, models):
    for task in ("text-classification", "translation"):
        name = tasks[task]
        limit = models[name]["limits"]["max_text_chars"]
        _check(rest, grpc, name, lambda m: [_text_input(m, ["ok", "x" * (limit + 1)])], 422, "INVALID_ARGUMENT",
               f"limit is {limit}")


def test_images_too_big_or_not_images(rest, grpc, tasks, models):
    name = tasks["image-classification"]
    limits = models[name]["limits"]

    def files(*blobs):
        def make(m):
            t = m.InferInput("image_bytes", [len(blobs)], "BYTES")
            t.set_data_from_numpy(np.array(list(blobs), dtype=object))
            return [t]
        return make

    many_pixels = encode_png(np.zeros((4100, 4100), dtype=np.uint8))
    _check(rest, grpc, name, files(many_pixels), 413, "RESOURCE_EXHAUSTED", f"limit is {limits['max_pixels']}")
    _check(rest, grpc, name, files(_png(1) + b"\0" * limits["max_bytes"]), 413, "RESOURCE_EXHAUSTED",
           f"limit is {limits['max_bytes']}")
    _check(rest, grpc, name, files(b"GIF? no, just text"), 415, "INVALID_ARGUMENT", "not a supported image")


def test_option_out_of_range_and_unknown_parameter(rest, grpc, tasks, models):
    name = tasks["translation"]
    limit = models[name]["limits"]["max_num_beams"]
    _check(rest, grpc, name, lambda m: [_text_input(m, ["Hallo."])], 422, "INVALID_ARGUMENT",
           f"num_beams must be from 1 to {limit}", parameters={"num_beams": limit + 1})
    _check(rest, grpc, name, lambda m: [_text_input(m, ["Hallo."])], 422, "INVALID_ARGUMENT",
           "unknown request parameter 'num_beam'", parameters={"num_beam": 2})
    cls = tasks["text-classification"]
    n = len(models[cls]["labels"])
    _check(rest, grpc, cls, lambda m: [_text_input(m, ["a"])], 422, "INVALID_ARGUMENT",
           f"top_k must be from 1 to {n}", parameters={"top_k": n + 1})


def test_unknown_output_is_422(rest, grpc, tasks):
    _check(rest, grpc, tasks["text-classification"], lambda m: [_text_input(m, ["a"])], 422, "INVALID_ARGUMENT",
           "has no output 'logits'", outputs=lambda m: [m.InferRequestedOutput("logits")])


def test_malformed_rest_bodies(http, tasks):
    """The JSON API's malformed-JSON / unknown-field / wrong-content rows, for the REST door's own bodies."""
    url = f"/v2/models/{tasks['text-classification']}/infer"
    cases = [
        (b'{"inputs": [', {}, 400, "not valid JSON"),
        (json.dumps({"inputz": []}).encode(), {}, 422, "unknown field 'inputz'"),
        (json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a"]}]}).encode(), {},
         422, "1 elements for shape \\[2\\]"),
        (json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                 "parameters": {"binary_data_size": 50}}]}).encode(), "header", 422,
         "binary_data_size 50 does not fit"),
        (b"[" * 100_000, {}, 400, "not valid JSON"),
    ]
    for body, headers, status, pattern in cases:
        if headers == "header":  # binary extension: a header length and too little binary data
            headers = {"Inference-Header-Content-Length": str(len(body))}
            body = body + b"\x03\x00\x00\x00abc"
        resp = http.post(url, content=body, headers=headers)
        assert resp.status_code == status, resp.text
        assert re.search(pattern, resp.json()["error"]), resp.text
    resp = http.post(url, content=b'{"inputs": []}', headers={"Inference-Header-Content-Length": "999"})
    assert resp.status_code == 400 and "Inference-Header-Content-Length" in resp.json()["error"]
    # the model is looked at first: an unknown or failed one is the answer, whatever the body holds
    for name, status, pattern in (("nope", 404, "unknown model 'nope'"), ("broken-checksum", 503, "failed to load")):
        for body, headers in ((b'{"inputs": [', {}), (b"{}", {"Inference-Header-Content-Length": "x"})):
            resp = http.post(f"/v2/models/{name}/infer", content=body, headers=headers)
            assert resp.status_code == status and re.search(pattern, resp.json()["error"]), resp.text


def test_non_utf8_text_is_422_naming_the_element(http, tasks):
    body = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2],
                                   "parameters": {"binary_data_size": 11}}]}).encode()
    raw = b"\x02\x00\x00\x00ok" + b"\x01\x00\x00\x00\xff"
    resp = http.post(f"/v2/models/{tasks['text-classification']}/infer", content=body + raw,
                      headers={"Inference-Header-Content-Length": str(len(body))})
    assert resp.status_code == 422 and "text[1] is not UTF-8" in resp.json()["error"]


def test_queue_full_is_503_and_unavailable(smoke_models, tmp_path, tasks):
    """An overloaded model answers at once: the queue holds one item, a batch of several cannot wait."""
    name = tasks["text-classification"]
    env = {"SERVICE_DEFAULT_BATCH__MAX_QUEUE_ITEMS": "1", "SERVICE_MODELS": json.dumps([name])}
    with serve(smoke_models, tmp_path / "serve", env=env) as srv:
        rest = thttp.InferenceServerClient(srv.http_address)
        grpc = tgrpc.InferenceServerClient(srv.grpc_address)
        _check(rest, grpc, name, lambda m: [_text_input(m, ["a", "b"])], 503, "UNAVAILABLE", "limit 1")
        with srv.client() as c:
            assert c.post("/classify", json={"model": name, "texts": ["a", "b"]}).status_code == 503


# ---- telemetry and logs -------------------------------------------------------------------------


def test_every_door_records_the_same_series_with_its_protocol(http, rest, grpc, tasks):
    name = tasks["text-classification"]
    rest.infer(name, [_text_input(thttp, ["x"])])
    grpc.infer(name, [_text_input(tgrpc, ["x"])])
    with pytest.raises(InferenceServerException):
        grpc.infer("nope", [_text_input(tgrpc, ["x"])])
    text = http.get("/metrics").text
    assert re.search(r'modelserve_requests_total\{endpoint="/v2/models/\{name\}/infer",protocol="oip-rest",'
                     r'status="200"\} [1-9]', text)
    assert re.search(r'modelserve_requests_total\{endpoint="ModelInfer",protocol="oip-grpc",status="200"\} [1-9]', text)
    assert re.search(r'modelserve_errors_total\{endpoint="ModelInfer",kind="not_found",model="nope",'
                     r'protocol="oip-grpc"\} [1-9]', text)
    assert re.search(r'modelserve_request_duration_seconds_count\{endpoint="ModelInfer",protocol="oip-grpc",'
                     r'status="404"\} [1-9]', text)


def test_oip_client_errors_are_logged_as_one_line(rest, grpc, server):
    for door, client, module in (("rest", rest, thttp), ("grpc", grpc, tgrpc)):
        marker = f"marker-oip-{door}"
        with pytest.raises(InferenceServerException):
            client.infer(marker, [_text_input(module, ["x"])])
        lines = [line for line in server.log().splitlines() if marker in line]
        assert len(lines) == 1 and "404" in lines[0], lines
    assert "Traceback" not in server.log()
