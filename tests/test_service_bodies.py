"""Bodies are bounded however they arrive: chunked uploads are cut off at the limit, JSON nesting is capped.

Against the real service with a 1 MB body limit: a 200 MiB chunked upload (no Content-Length) to
each HTTP door gets 413 after about the limit's worth of bytes, within a second, instead of
being read to the end; deeply nested JSON gets a 4xx naming the body at once in both doors.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx
import pytest

from service_support import names_by_task, serve, smoke_models  # noqa: F401 (fixture)

LIMIT = 1_000_000


@pytest.fixture(scope="module")
def names(smoke_models: Path) -> dict[str, str]:
    return names_by_task(smoke_models)


@pytest.fixture(scope="module")
def server(smoke_models: Path, names, tmp_path_factory):
    env = {"SERVICE_MAX_REQUEST_BYTES": str(LIMIT),
           "SERVICE_MODELS": json.dumps([names["text-classification"], names["image-classification"]])}
    with serve(smoke_models, tmp_path_factory.mktemp("bodies"), env=env) as srv:
        yield srv


def chunked_upload(address: str, path: str, content_type: str, first: bytes, total: int,
                   chunk: int = 64 * 1024) -> tuple[bytes, int, float]:
    """POST ``first`` + filler with Transfer-Encoding: chunked until ``total`` bytes or an answer.

    Returns (the answer, body bytes the client had written when it came, seconds).
    """
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n".encode())
    sock.setblocking(False)
    sent, answer, t0 = 0, b"", time.monotonic()
    piece = first + b"a" * (chunk - len(first))
    while sent < total and time.monotonic() - t0 < 60:
        try:
            answer += sock.recv(65536)
            break  # the server answered (or closed)
        except BlockingIOError:
            pass
        try:
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            sent += len(piece)
            piece = b"a" * chunk
        except BlockingIOError:
            time.sleep(0.001)  # the server is not reading: wait for its answer
        except (BrokenPipeError, ConnectionResetError):
            break
    elapsed = time.monotonic() - t0
    sock.settimeout(5)
    try:
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < 20:
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    except OSError:  # the server closes with our unread bytes in its buffer: a reset after its answer
        pass
    sock.close()
    return answer, sent, elapsed


@pytest.mark.parametrize("door", ["json", "oip-rest", "multipart"])
def test_a_chunked_upload_is_cut_off_at_the_limit(server, names, door):
    text, image = names["text-classification"], names["image-classification"]
    path, ctype, first = {
        "json": ("/classify", "application/json", b'{"model": "%s", "texts": ["' % text.encode()),
        "oip-rest": (f"/v2/models/{text}/infer", "application/json", b'{"inputs": [{"name": "text", "data": ["'),
        "multipart": ("/classify_image", "multipart/form-data; boundary=XX",
                      b'--XX\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n'
                      b"Content-Type: image/png\r\n\r\n"),
    }[door]
    answer, sent, elapsed = chunked_upload(server.http_address, path, ctype, first, 200 * 2**20)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"connection: close" in head.lower()
    assert str(LIMIT).encode() in body
    assert sent < 20 * LIMIT and elapsed < 5, (sent, elapsed)  # not 200 MiB, not read to the end
    # the service still answers normally afterwards
    assert httpx.get(f"{server.url}/readyz", timeout=30).status_code == 200


def test_a_declared_oversized_body_is_refused_before_it_is_read(server, names):
    resp = httpx.post(f"{server.url}/classify", content=b"x" * (LIMIT + 1),
                      headers={"content-type": "application/json"}, timeout=30)
    assert resp.status_code == 413 and resp.json()["error"]["limit"] == LIMIT


@pytest.mark.parametrize("depth", [300, 100_000])
def test_deep_json_nesting_is_a_4xx_in_both_doors(server, names, depth):
    text = names["text-classification"]
    nested = "[" * depth + "]" * depth
    t0 = time.monotonic()
    resp = httpx.post(f"{server.url}/classify", content=f'{{"model": "{text}", "texts": {nested}}}',
                      headers={"content-type": "application/json"}, timeout=30)
    assert resp.status_code == 422 and resp.json()["error"]["field"] == "body", resp.text[:300]
    assert "recursion limit" in resp.json()["error"]["message"]
    resp = httpx.post(f"{server.url}/v2/models/{text}/infer", timeout=30,
                      content=f'{{"inputs": [{{"name": "text", "datatype": "BYTES", "shape": [1], "data": {nested}}}]}}')
    assert resp.status_code == 400 and "200 levels of nesting" in resp.json()["error"], resp.text[:300]
    assert time.monotonic() - t0 < 2


def test_a_huge_string_is_refused_by_the_text_limit_naming_the_item(server, names):
    text = names["text-classification"]
    resp = httpx.post(f"{server.url}/classify", json={"model": text, "texts": ["ok", "y" * 900_000]}, timeout=30)
    assert resp.status_code in (413, 422) and resp.json()["error"]["field"] == "texts[1]", resp.text[:300]


def test_a_body_in_pieces_is_read_whole_and_a_disconnect_is_noticed():
    """The doors' request reads the body straight from ``receive`` (service/front.py): every piece, once."""
    import asyncio

    from starlette.requests import ClientDisconnect

    from service.front import DoorRequest

    def receiver(messages):
        it = iter(messages)

        async def receive():
            return next(it)

        return receive

    scope = {"type": "http", "method": "POST", "path": "/classify", "headers": [], "query_string": b""}
    pieces = [{"type": "http.request", "body": b'{"a": ', "more_body": True},
              {"type": "http.request", "body": b"", "more_body": True},
              {"type": "http.request", "body": b"1}", "more_body": False}]
    request = DoorRequest(scope, receiver(pieces))
    assert asyncio.run(request.body()) == b'{"a": 1}'
    assert asyncio.run(request.body()) == b'{"a": 1}'  # kept: a second read does not receive again
    gone = DoorRequest(scope, receiver([pieces[0], {"type": "http.disconnect"}]))
    with pytest.raises(ClientDisconnect):
        asyncio.run(gone.body())


def test_a_chunked_body_under_the_limit_is_answered(server, names):
    name = names["text-classification"]
    body = json.dumps({"model": name, "texts": ["a chunked upload", "in pieces"]}).encode()
    with server.client() as c:
        plain = c.post("/classify", content=body, headers={"content-type": "application/json"})
        chunked = c.post("/classify", content=iter([body[:7], body[7:20], body[20:]]),
                         headers={"content-type": "application/json"})
    assert plain.status_code == chunked.status_code == 200, chunked.text
    assert chunked.json()["results"] == plain.json()["results"]
