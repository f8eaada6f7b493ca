"""Graceful drain: SIGTERM to ``bentoml serve`` (what Kubernetes and Docker send to PID 1) under 16 clients.

Two workers, a 2 s grace period. Readiness turns 503 at once; every request sent before the grace
period ends is answered 200 (including slow ones still running when the listener closes); after
it, clients get connection errors only (no 5xx, no hang), and the server exits. The measured
drain time is what deploy/k8s's preStop and terminationGracePeriodSeconds are sized from.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import tritonclient.grpc as tgrpc

from service_support import names_by_task, serve, smoke_models  # noqa: F401 (fixture)

GRACE_S = 2.0
READY_OFF_S = 1.0  # both workers' readiness off this soon after SIGTERM (the grace period is GRACE_S)
SENTENCES = ["Das ist ein ziemlich langer Satz über das Wetter in Berlin."] * 8


class Client(threading.Thread):
    """Sends ``body`` to ``path`` over a keep-alive connection until told to stop; records every outcome."""

    def __init__(self, address: str, path: str, body: dict, stop: threading.Event):
        super().__init__(daemon=True)
        self.host, port = address.rsplit(":", 1)
        self.port = int(port)
        self.path, self.body, self.stop = path, json.dumps(body).encode(), stop
        self.records: list[tuple[float, float, str]] = []  # (start, end, status or error name)

    def run(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                conn.request("POST", self.path, self.body, {"content-type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                outcome = str(resp.status)
                if resp.getheader("connection", "").lower() == "close":
                    conn.close()  # drain: the next request opens a new connection (another pod, in a cluster)
            except (OSError, http.client.HTTPException) as exc:
                outcome = type(exc).__name__
                conn.close()
                time.sleep(0.05)
            self.records.append((t0, time.monotonic(), outcome))


def _get(address: str, path: str) -> str:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", path)
        return str(conn.getresponse().status)
    except OSError as exc:
        return type(exc).__name__
    finally:
        conn.close()


def _within(deadline: float, check) -> bool:
    """Whether ``check()`` holds at some look before ``time.monotonic()`` reaches ``deadline`` (looks every 20 ms)."""
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


@pytest.fixture(scope="module")
def translator(smoke_models: Path) -> str:
    return names_by_task(smoke_models)["translation"]


def test_sigterm_under_load_loses_no_request_sent_before_the_grace_period_ends(smoke_models, translator, tmp_path):
    env = {"SERVICE_WORKERS": "2", "SERVICE_MODELS": json.dumps([translator]),
           "SERVICE_SHUTDOWN_GRACE_S": str(GRACE_S), "SERVICE_DRAIN_SECONDS": "22"}
    with serve(smoke_models, tmp_path / "serve", env=env) as srv:
        body = {"model": translator, "texts": SENTENCES, "num_beams": 4, "max_new_tokens": 32}
        slow_body = {"model": translator, "texts": SENTENCES * 8, "num_beams": 8, "max_new_tokens": 128}
        stop = threading.Event()
        clients = [Client(srv.http_address, "/translate", body, stop) for _ in range(16)]
        for c in clients:
            c.start()
        time.sleep(2.0)
        assert _get(srv.http_address, "/readyz") == "200"
        grpc = tgrpc.InferenceServerClient(srv.grpc_address)
        assert grpc.is_server_ready()

        t_term = time.monotonic()
        os.kill(srv.proc.pid, signal.SIGTERM)  # the arbiter only, as a container runtime does
        ready, not_ready_at = "200", None
        while time.monotonic() - t_term < GRACE_S - 0.5:
            ready = _get(srv.http_address, "/readyz")
            if ready != "200":
                not_ready_at = time.monotonic() - t_term
                break
            time.sleep(0.02)
        assert ready == "503", ready
        # each request may reach either worker, and the arbiter signals them one after the other: both doors must
        # report not ready within READY_OFF_S of SIGTERM (one look right after /readyz could reach the other worker)
        assert _within(t_term + READY_OFF_S, lambda: _get(srv.http_address, "/v2/health/ready") == "400")
        assert _within(t_term + READY_OFF_S, lambda: not grpc.is_server_ready())
        grpc.close()

        # a long request sent just before the grace period ends: it must finish after the listener closed
        time.sleep(max(0.0, t_term + GRACE_S - 0.3 - time.monotonic()))
        slow_records: list[tuple[float, float, str]] = []

        def one_slow():
            host, port = srv.http_address.rsplit(":", 1)
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            t0 = time.monotonic()
            conn.request("POST", "/translate", json.dumps(slow_body).encode(), {"content-type": "application/json"})
            resp = conn.getresponse()
            results = json.loads(resp.read()).get("results", [])
            slow_records.append((t0, time.monotonic(), f"{resp.status}:{len(results)}"))

        slow_thread = threading.Thread(target=one_slow, daemon=True)
        slow_thread.start()

        srv.proc.wait(timeout=GRACE_S + 30)
        drain_s = time.monotonic() - t_term
        time.sleep(0.5)
        stop.set()
        for c in clients:
            c.join(timeout=10)
        slow_thread.join(timeout=5)

    records = [r for c in clients for r in c.records]
    grace_end = t_term + GRACE_S
    before = [r for r in records if r[0] < grace_end - 0.1]
    after = [r for r in records if r[0] >= grace_end - 0.1]
    during = [r for r in before if r[0] >= t_term]
    print(f"\nreadyz 503 after {not_ready_at * 1000:.0f} ms; drain (SIGTERM to exit) {drain_s:.2f} s; "
          f"{len(before)} requests before the grace end ({len(during)} after SIGTERM), {len(after)} after; "
          f"slow request {slow_records}; outcomes after: {sorted({r[2] for r in after})}")
    assert not_ready_at is not None and not_ready_at < 0.5
    assert during and all(r[2] == "200" for r in before), [r for r in before if r[2] != "200"][:5]
    assert not any(r[2].startswith("5") or r[2].startswith("4") for r in records)
    assert slow_records and slow_records[0][2] == f"200:{len(slow_body['texts'])}", slow_records
    assert slow_records[0][1] > grace_end  # it finished after the listener had closed
    assert all(r[1] - r[0] < drain_s + 1 for r in records)  # nobody hung past the exit
    assert drain_s < GRACE_S + 20
