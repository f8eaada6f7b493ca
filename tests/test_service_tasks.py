"""Task specs: the one home of option bounds, OIP tensors and answers (no server needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from modelkit.manifest import Manifest
from modelkit.registry import load_version
from service.errors import ServiceError
from service.tasks import SPECS, endpoint_tasks, spec_for
from service.tasks.base import TensorValues
from service_support import names_by_task, smoke_models  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def manifests(smoke_models: Path) -> dict[str, Manifest]:
    out = {}
    for task, name in names_by_task(smoke_models).items():
        out[task], _ = load_version(smoke_models, name, None)
    return out


def test_every_manifest_task_has_a_spec_and_json_endpoint():
    from typing import get_args

    from modelkit.manifest import Task

    assert set(SPECS) == set(get_args(Task))
    assert endpoint_tasks() == {"/classify": ("text-classification", "multi-label-classification"),
                                "/translate": ("translation",), "/classify_image": ("image-classification",)}


@pytest.mark.parametrize("options, field, bound", [
    ({"num_beams": 0}, "num_beams", "min"), ({"num_beams": 99}, "num_beams", "max"),
    ({"max_new_tokens": 0}, "max_new_tokens", "min"), ({"max_new_tokens": 10_000}, "max_new_tokens", "max"),
    ({"max_new_tokens": 1.5}, "max_new_tokens", "max"), ({"num_beams": True}, "num_beams", "max"),
    ({"num_beams": "2"}, "num_beams", "max"),
])
def test_translation_bounds_come_from_the_manifest(manifests, options, field, bound):
    mf = manifests["translation"]
    with pytest.raises(ServiceError) as err:
        spec_for("translation").resolve_options(mf, options)
    maximum = {"num_beams": mf.generation.max_num_beams, "max_new_tokens": mf.generation.max_max_new_tokens}[field]
    assert err.value.status == 422 and err.value.field == field
    assert err.value.limit == (1 if bound == "min" else maximum)


def test_defaults_are_the_manifests(manifests):
    mf = manifests["translation"]
    assert spec_for("translation").resolve_options(mf, {}) == {
        "num_beams": mf.generation.num_beams, "max_new_tokens": mf.generation.max_new_tokens}
    assert spec_for("text-classification").resolve_options(manifests["text-classification"], {}) == {"top_k": 1}
    assert spec_for("multi-label-classification").resolve_options(manifests["multi-label-classification"], {}) == {
        "top_k": None}


@pytest.mark.parametrize("task", ["text-classification", "multi-label-classification", "image-classification"])
def test_top_k_bounded_by_the_label_count(manifests, task):
    mf = manifests[task]
    n = len(mf.labels)
    spec = spec_for(task)
    assert spec.resolve_options(mf, {"top_k": n}) == {"top_k": n}
    for bad, limit in ((n + 1, n), (0, 1)):
        with pytest.raises(ServiceError) as err:
            spec.resolve_options(mf, {"top_k": bad})
        assert (err.value.field, err.value.limit) == ("top_k", limit)


def _result(scores: dict[str, float], chosen: list[str] | None = None) -> dict:
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    labels = [{"label": k, "score": v} for k, v in ranked if chosen is None or k in chosen]
    return {"labels": labels, "scores": scores, "features": {"top_confidence": ranked[0][1]}}


def test_classifier_outputs_and_json_results(manifests):
    mf = manifests["text-classification"]
    spec = spec_for("text-classification")
    scores = dict(zip(mf.labels, np.linspace(0.1, 0.9, len(mf.labels)) / np.linspace(0.1, 0.9, len(mf.labels)).sum()))
    results = [_result(scores)]
    best = max(scores, key=scores.get)
    label = spec.output("label", results, mf)
    assert label.shape == (1,) and label.values == [best]
    probs = spec.output("probabilities", results, mf)
    assert probs.shape == (1, len(mf.labels)) and probs.values == list(scores.values())
    assert spec.json_result(results[0], {"top_k": 2})["labels"] == results[0]["labels"][:2]
    assert spec.predicted_labels(results[0]) == [best]


def test_multi_label_outputs(manifests):
    mf = manifests["multi-label-classification"]
    spec = spec_for("multi-label-classification")
    scores = {lab: (0.9 if i < 3 else 0.01) for i, lab in enumerate(mf.labels)}
    result = _result(scores, chosen=list(mf.labels[:3]))
    assert json.loads(spec.output("labels", [result], mf).values[0]) == list(mf.labels[:3])
    scores_out = spec.output("scores", [result, result], mf)
    assert scores_out.shape == (2, len(mf.labels)) and scores_out.values == 2 * list(scores.values())
    assert spec.json_result(result, {"top_k": 2})["labels"] == result["labels"][:2]
    assert spec.json_result(result, {"top_k": None})["labels"] == result["labels"]
    assert spec.predicted_labels(result) == list(mf.labels[:3])


def test_inputs_become_items(manifests):
    text = TensorValues((2,), [b"one", "zw\xc3\xb6lf".encode("latin-1")])
    items, field = spec_for("text-classification").items_from_tensors(manifests["text-classification"], {"text": text})
    assert items == ["one", "zwölf"] and field == "text"
    with pytest.raises(ServiceError) as err:
        spec_for("translation").items_from_tensors(manifests["translation"],
                                                   {"text": TensorValues((2,), [b"ok", b"\xff\xfe"])})
    assert err.value.field == "text[1]"
    mf = manifests["image-classification"]
    pixels = np.zeros((2, 28, 28, 1), np.uint8)
    items, field = spec_for("image-classification").items_from_tensors(mf, {"image": pixels})
    assert len(items) == 2 and field == "image" and items[0].shape == (28, 28, 1)
    with pytest.raises(ServiceError) as err:
        spec_for("image-classification").items_from_tensors(mf, {"image": pixels,
                                                                 "image_bytes": TensorValues((1,), [b"x"])})
    assert err.value.field == "inputs"


def test_rest_codec_round_trips_bytes_tensors_of_any_shape(manifests):
    """The binary extension's BYTES tensors, [N] and [N, 1], decoded to the same items and encoded back."""
    from service.doors.oip_codec import decode_rest_request, deserialize_bytes, encode_rest_response, serialize_bytes

    values = [b"one", b"", "zwölf".encode()]
    raw = serialize_bytes(values)
    assert deserialize_bytes(raw, 3, "text") == values
    spec, mf = spec_for("text-classification"), manifests["text-classification"]
    for shape in ([3], [3, 1]):
        head = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": shape,
                                       "parameters": {"binary_data_size": len(raw)}}]}).encode()
        req = decode_rest_request(head + raw, len(head))
        assert req.inputs["text"] == TensorValues(tuple(shape), values)
        assert spec.items_from_tensors(mf, req.inputs)[0] == ["one", "", "zwölf"]
    body, length = encode_rest_response({"model_name": "m"}, [("label", "BYTES", TensorValues((3,), values), True)])
    assert json.loads(body[:length])["outputs"][0]["parameters"]["binary_data_size"] == len(raw)
    assert body[length:] == raw


def test_rest_response_outputs_as_json_data_and_as_binary_hold_the_same_values():
    from service.doors.oip_codec import deserialize_bytes, encode_rest_response

    scores = TensorValues((2, 3), [0.1, 0.2, 0.7, 0.5, 0.25, 0.25])
    label = TensorValues((2,), ["pos", "zwölf"])
    body, length = encode_rest_response({"model_name": "m"}, [("probabilities", "FP32", scores, False),
                                                              ("label", "BYTES", label, False)])
    assert length is None
    probs, labels = json.loads(body)["outputs"]
    assert probs == {"name": "probabilities", "datatype": "FP32", "shape": [2, 3], "data": scores.values}
    assert labels["shape"] == [2] and labels["data"] == ["pos", "zwölf"]
    body, length = encode_rest_response({"model_name": "m"}, [("probabilities", "FP32", scores, True),
                                                              ("label", "BYTES", label, True)])
    n = json.loads(body[:length])["outputs"][0]["parameters"]["binary_data_size"]
    assert n == 6 * 4
    assert np.frombuffer(body[length:length + n], "<f4").tolist() == np.float32(scores.values).tolist()
    assert deserialize_bytes(body[length + n:], 2, "label") == [b"pos", "zwölf".encode()]


def test_output_packing_writes_what_numpy_would_for_every_fixed_size_datatype():
    """``STRUCT_CODES`` is a second table beside ``DTYPES`` (struct's own ``l`` is 4 bytes where numpy's int64
    char is ``l``): each code packs the element size and bytes numpy writes for that datatype."""
    import struct

    from service.doors.oip_codec import DTYPES, STRUCT_CODES, to_raw

    assert set(STRUCT_CODES) == set(DTYPES) - {"BYTES"}
    for datatype, code in STRUCT_CODES.items():
        dtype = DTYPES[datatype]
        assert struct.calcsize("<" + code) == dtype.itemsize, datatype
        if dtype.kind == "b":
            values = [True, False, True]
        elif dtype.kind in "iu":  # the datatype's own extremes
            values = [int(np.iinfo(dtype).min), 1, int(np.iinfo(dtype).max)]
        else:
            values = [0.5, -2.0, 3.25]
        assert to_raw(TensorValues((3,), values), datatype) == np.asarray(values, dtype=dtype).tobytes(), datatype


@pytest.mark.parametrize("tensor, field", [
    ({"shape": [True], "data": ["a"]}, "text.shape"), ({"shape": [-1], "data": ["a"]}, "text.shape"),
    ({"shape": "1", "data": ["a"]}, "text.shape"),
    ({"shape": [1], "parameters": {"binary_data_size": True}}, "text.parameters.binary_data_size"),
])
def test_rest_codec_refuses_bool_and_negative_sizes(tensor, field):
    from service.doors.oip_codec import decode_rest_request

    head = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", **tensor}]}).encode()
    with pytest.raises(ServiceError) as err:
        decode_rest_request(head + b"\x01\x00\x00\x00a", len(head))
    assert err.value.status == 422 and err.value.field == field


@pytest.mark.parametrize("datatype", [["BYTES"], {"a": 1}, None, 5])
def test_rest_codec_refuses_a_datatype_that_is_not_a_name(datatype):
    from service.doors.oip_codec import decode_rest_request

    head = json.dumps({"inputs": [{"name": "text", "datatype": datatype, "shape": [1], "data": ["a"]}]}).encode()
    with pytest.raises(ServiceError) as err:  # a list or object once reached a dict lookup: a 500
        decode_rest_request(head, None)
    assert err.value.status == 422 and err.value.field == "text.datatype"


def test_rest_headers_kept_once_checked_carry_nothing_of_one_request_into_the_next():
    """A binary header seen before is not parsed again; each request still gets its own bytes, its own size
    checks, and a header with JSON data (or past the capacity) is never kept."""
    from service.doors.oip_codec import RestHeaders, decode_rest_request, serialize_bytes

    headers = RestHeaders(capacity=2)

    def body(texts: list[bytes], size: int | None = None, params: dict | None = None) -> tuple[bytes, int]:
        raw = serialize_bytes(texts)
        head = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)],
                                       "parameters": {"binary_data_size": len(raw) if size is None else size}}],
                           "parameters": params or {"binary_data_output": True}}).encode()
        return head + raw, len(head)

    first = decode_rest_request(*body([b"abc"]), headers)
    second = decode_rest_request(*body([b"xyz"]), headers)  # same header bytes, other data
    assert first.inputs["text"].values == [b"abc"] and second.inputs["text"].values == [b"xyz"]
    assert first.parameters is second.parameters and len(headers._kept) == 1
    with pytest.raises(TypeError):  # a kept header's parameters are shared, so they are read-only
        second.parameters["binary_data_output"] = False
    data, length = body([b"abc"], size=9)  # a kept-able header whose size passes the 7 bytes: refused every time
    for _ in range(2):
        with pytest.raises(ServiceError) as err:
            decode_rest_request(data, length, headers)
        assert err.value.status == 422 and "binary_data_size 9 does not fit the 7 bytes" in err.value.message
    mixed = json.dumps({"inputs": [{"name": "a", "datatype": "INT32", "shape": [1], "data": [4]},
                                   {"name": "b", "datatype": "INT32", "shape": [1],
                                    "parameters": {"binary_data_size": 4}}]}).encode()
    req = decode_rest_request(mixed + np.int32(9).tobytes(), len(mixed), headers)
    assert req.inputs["a"].tolist() == [4] and req.inputs["b"].tolist() == [9]
    assert len(headers._kept) == 2  # the size-9 header; not the one holding data
    with_id = json.dumps({"id": "r1", "inputs": [{"name": "b", "datatype": "INT32", "shape": [1],
                                                  "parameters": {"binary_data_size": 4}}]}).encode()
    assert decode_rest_request(with_id + np.int32(3).tobytes(), len(with_id), headers).id == "r1"
    long_params = {"binary_data_output": True, "note": "x" * 2000}
    decode_rest_request(*body([b"abc"], params=long_params), headers)
    assert len(headers._kept) == 2  # one request's own id, or a header past max_header_bytes: not kept
    newest = body([b"a"], params={"timeout": 5})
    decode_rest_request(*newest, headers)
    assert len(headers._kept) == 2 and newest[0][:newest[1]] in headers._kept  # at capacity: the oldest dropped
    assert decode_rest_request(*body([b"again"]), headers).inputs["text"].values == [b"again"]
