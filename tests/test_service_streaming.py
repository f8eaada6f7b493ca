"""Continuous decoding through a real ``bentoml serve``: streaming, disconnects, the generate extension.

Everything goes over real HTTP (httpx and raw sockets): ``POST /translate`` with and without
``"stream": true``, Triton's ``/generate`` and ``/generate_stream``, a client that hangs up
mid-stream (its rows are freed: ``modelserve_decoding_freed_rows_total{reason="cancelled"}``), a
full queue, and a version exported before decoder_step, which keeps the request batcher.
"""

from __future__ import annotations

import json
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from decoding_support import registry_with, step_registry, without_step_graph  # noqa: F401 (fixture)
from modelkit.registry import load_version
from modelkit.runtimes import create_runtime
from service.settings import ServiceSettings
from service_support import names_by_task, serve, smoke_models  # noqa: F401 (fixture)

TEXTS = ["Das Haus ist klein.", "Guten Morgen.", "Wo ist der Bahnhof?", "Der Hund schläft.",
         "Öffnen Sie die Datei.", "Ja.", "Das ist ein sehr langer Satz mit vielen Wörtern darin.", "Danke schön."]


@pytest.fixture(scope="module")
def server(step_registry, tmp_path_factory):
    work = tmp_path_factory.mktemp("streaming")
    classifier = names_by_task(step_registry).get("text-classification")
    registry = registry_with(step_registry, work / "registry", ["de-en"] + ([classifier] if classifier else []))
    without_step_graph(step_registry, "de-en", registry, "de-en-old")
    env = {"SERVICE_DEFAULT_DECODING__MAX_ROWS": "4", "SERVICE_DEFAULT_DECODING__MAX_QUEUE_ITEMS": "40",
           "SERVICE_GRPC": "false"}
    with serve(registry, work, env=env) as srv:
        yield srv, registry, classifier


@pytest.fixture(scope="module")
def reference(server):
    """The request batcher's decoder on the same version (greedy and beam), in this process."""
    _, registry, _ = server
    manifest, vdir = load_version(registry, "de-en")
    rt = create_runtime(manifest, vdir, ServiceSettings(registry=registry).session_settings())
    rt.load()

    def translate(texts, num_beams, max_new_tokens):
        return [rt.detokenize(h.tokens) for h in
                (rt.generate_ids([rt.validate(t)], num_beams=num_beams, max_new_tokens=max_new_tokens)[0]
                 for t in texts)]
    return translate


def events(lines):
    """Server-sent events (event name, data) from an iterator of text lines."""
    name, data = None, []
    for line in lines:
        if line == "":
            if data:
                yield name, json.loads("\n".join(data))
            name, data = None, []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


def metric(srv, name, **labels) -> float:
    body = httpx.get(f"{srv.url}/metrics", timeout=30).text
    total = 0.0
    for line in body.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_concurrent_translations_equal_the_batch_decoder(server, reference):
    srv, *_ = server
    calls = [(TEXTS[i % 8:i % 8 + 2], 1 + 2 * (i % 3 == 0), 6 + i % 7) for i in range(32)]

    def call(args):
        texts, beams, max_new = args
        r = httpx.post(f"{srv.url}/translate", json={"model": "de-en", "texts": texts, "num_beams": beams,
                                                     "max_new_tokens": max_new}, timeout=120)
        assert r.status_code == 200, r.text
        return [x["translation"] for x in r.json()["results"]]

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(call, calls))
    assert got == [reference(t, b, m) for t, b, m in calls]
    models = {m["name"]: m for m in httpx.get(f"{srv.url}/models").json()["models"]}
    assert models["de-en"]["max_batch_size"] == 4 and models["de-en"]["max_wait_ms"] == 0
    assert models["de-en-old"]["max_wait_ms"] > 0  # the old version keeps the request batcher
    assert metric(srv, "modelserve_generated_tokens_total", model="de-en") > 0
    assert metric(srv, "modelserve_time_to_first_token_seconds_count", model="de-en") >= 32


def test_stream_sends_pieces_before_the_result(server, reference):
    srv, *_ = server
    body = {"model": "de-en", "texts": TEXTS[:3], "num_beams": 1, "max_new_tokens": 40, "stream": True}
    seen = []
    t0 = time.perf_counter()
    with httpx.stream("POST", f"{srv.url}/translate", json=body, timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for name, data in events(r.iter_lines()):
            seen.append((time.perf_counter() - t0, name, data))
    names = [n for _, n, _ in seen]
    assert names[-1] == "result" and names.count("result") == 1 and names[0] == "piece"
    assert seen[0][0] < seen[-1][0]  # the first piece came before the whole answer
    final = [x["translation"] for x in seen[-1][2]["results"]]
    assert final == reference(TEXTS[:3], 1, 40)
    for i, text in enumerate(final):
        assert "".join(d["text"] for _, n, d in seen if n == "piece" and d["index"] == i) == text


def test_stream_errors_before_start_are_plain_4xx(server):
    srv, *_ = server
    r = httpx.post(f"{srv.url}/translate", json={"model": "de-en", "texts": ["x"], "num_beams": 99, "stream": True})
    assert r.status_code == 422 and r.json()["error"]["field"] == "num_beams"


def test_disconnect_mid_stream_frees_the_rows(server):
    srv, *_ = server
    before = metric(srv, "modelserve_decoding_freed_rows_total", model="de-en", reason="cancelled")
    payload = json.dumps({"model": "de-en", "texts": TEXTS * 3, "num_beams": 1, "max_new_tokens": 250,
                          "stream": True}).encode()
    host, port = srv.http_address.split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    sock.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    received = b""
    while b"event: piece" not in received:
        chunk = sock.recv(4096)
        assert chunk, "server closed the stream before the first piece"
        received += chunk
    assert metric(srv, "modelserve_decoding_rows", model="de-en") > 0
    sock.close()  # the client goes away mid-stream
    deadline = time.time() + 30
    while time.time() < deadline:
        freed = metric(srv, "modelserve_decoding_freed_rows_total", model="de-en", reason="cancelled") - before
        if freed > 0 and metric(srv, "modelserve_decoding_rows", model="de-en") == 0:
            break
        time.sleep(0.2)
    assert freed > 0, "no rows were freed after the disconnect"
    assert metric(srv, "modelserve_decoding_rows", model="de-en") == 0
    # far fewer tokens than 24 texts x 250 would have taken
    r = httpx.post(f"{srv.url}/translate", json={"model": "de-en", "texts": ["Ja."]}, timeout=60)
    assert r.status_code == 200


def test_full_queue_answers_503_at_once(server):
    srv, *_ = server
    big = {"model": "de-en", "texts": (TEXTS * 8)[:41], "num_beams": 1, "max_new_tokens": 5}
    t0 = time.perf_counter()
    r = httpx.post(f"{srv.url}/translate", json=big, timeout=60)
    assert r.status_code == 503, r.text
    assert time.perf_counter() - t0 < 5
    err = r.json()["error"]
    assert err["limit"] == 40 and (err.get("retry_after", 0) >= 1 or "retry-after" in r.headers)


def test_generate_extension_with_a_plain_http_client(server, reference):
    srv, _, classifier = server
    r = httpx.post(f"{srv.url}/v2/models/de-en/generate",
                   json={"text": TEXTS[0], "parameters": {"num_beams": 1, "max_new_tokens": 20}}, timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_name"] == "de-en" and out["translation"] == out["text_output"] == reference(TEXTS[:1], 1, 20)[0]
    r = httpx.post(f"{srv.url}/v2/models/de-en/generate",
                   json={"text_input": TEXTS[:2], "id": "r1", "parameters": {"max_new_tokens": 20, "num_beams": 1}})
    assert r.json()["translation"] == reference(TEXTS[:2], 1, 20) and r.json()["id"] == "r1"
    with httpx.stream("POST", f"{srv.url}/v2/models/de-en/generate_stream",
                      json={"text_input": TEXTS[1], "parameters": {"max_new_tokens": 20, "num_beams": 1}}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        got = [d for _, d in events(r.iter_lines())]
    assert got[-1]["final"] is True and got[-1]["text_output"] == reference(TEXTS[1:2], 1, 20)[0]
    assert "".join(d["text_output"] for d in got[:-1]) == got[-1]["text_output"]
    bad = httpx.post(f"{srv.url}/v2/models/de-en/generate", json={"text": "x", "parameters": {"top_p": 0.9}})
    assert bad.status_code == 422 and "top_p" in bad.json()["error"]
    bad = httpx.post(f"{srv.url}/v2/models/de-en/generate", json={"prompt": "x"})
    assert bad.status_code == 422 and "prompt" in bad.json()["error"]
    assert httpx.post(f"{srv.url}/v2/models/nope/generate", json={"text": "x"}).status_code == 404
    if classifier:
        assert httpx.post(f"{srv.url}/v2/models/{classifier}/generate", json={"text": "x"}).status_code == 422
    old = httpx.post(f"{srv.url}/v2/models/de-en-old/generate_stream", json={"text": TEXTS[0]})
    assert old.status_code == 200
    assert [d.get("final") for _, d in events(old.text.splitlines())][-1] is True


def test_old_version_streams_one_final_answer(server, reference):
    srv, *_ = server
    body = {"model": "de-en-old", "texts": TEXTS[:2], "num_beams": 1, "max_new_tokens": 20, "stream": True}
    r = httpx.post(f"{srv.url}/translate", json=body, timeout=60)
    got = list(events(r.text.splitlines()))
    assert got[-1][0] == "result"
    assert [x["translation"] for x in got[-1][1]["results"]] == reference(TEXTS[:2], 1, 20)
    plain = httpx.post(f"{srv.url}/translate", json={**body, "stream": False}).json()
    assert plain["results"] == got[-1][1]["results"]
    assert re.fullmatch(r"\d{8}-\d{6}", plain["version"])
