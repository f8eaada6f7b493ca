"""Chaos on real processes: a worker killed under load, a model file corrupted while serving, Prometheus
killed while scraping, the registry's disk filling up during a publish.

What can run here and how: workers and Prometheus are real processes killed with SIGKILL; the
full disk is a real tmpfs of a few hundred kB mounted in a private user and mount namespace
(``unshare --map-root-user --mount``: no privileges needed where user namespaces are enabled; the
test skips with the reason where they are not), and the publish is a real smoke training run.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from monitoring.prometheus_runner import Prometheus
from service_support import ROOT, copy_model, model_graph, names_by_task, serve, smoke_models  # noqa: F401


class Load(threading.Thread):
    """One client on a keep-alive connection sending ``body`` to ``path`` until stopped."""

    def __init__(self, address: str, path: str, body: dict, stop: threading.Event):
        super().__init__(daemon=True)
        host, port = address.rsplit(":", 1)
        self.host, self.port, self.path, self.stop = host, int(port), path, stop
        self.body = json.dumps(body).encode()
        self.records: list[tuple[float, float, str]] = []

    def run(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                conn.request("POST", self.path, self.body, {"content-type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                outcome = str(resp.status)
            except (OSError, http.client.HTTPException) as exc:
                outcome = type(exc).__name__
                conn.close()
            self.records.append((t0, time.monotonic(), outcome))


def _workers(server) -> list[psutil.Process]:
    """The live worker processes (a killed one stays a zombie until the arbiter reaps it)."""
    found = []
    for p in psutil.Process(server.proc.pid).children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "_bentoml_impl.worker" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            pass
    return found


@pytest.fixture(scope="module")
def names(smoke_models: Path) -> dict[str, str]:
    return names_by_task(smoke_models)


def test_kill_9_of_one_worker_under_load(smoke_models, names, tmp_path):
    """Two workers, 8 clients. SIGKILL one: the other keeps serving, the arbiter starts a new one, and
    only requests on the dead worker's connections fail (at most one per client)."""
    name = names["text-classification"]
    env = {"SERVICE_WORKERS": "2", "SERVICE_MODELS": json.dumps([name])}
    with serve(smoke_models, tmp_path / "serve", env=env) as srv:
        before = _workers(srv)
        assert len(before) == 2
        stop = threading.Event()
        clients = [Load(srv.http_address, "/classify", {"model": name, "texts": ["a fine day"]}, stop)
                   for _ in range(8)]
        for c in clients:
            c.start()
        time.sleep(2)
        victim = before[0]
        t_kill = time.monotonic()
        victim.send_signal(signal.SIGKILL)
        replaced_after = None
        while time.monotonic() - t_kill < 40:
            now = _workers(srv)
            if len(now) == 2 and victim.pid not in {p.pid for p in now}:
                replaced_after = time.monotonic() - t_kill
                break
            time.sleep(0.2)
        assert replaced_after is not None, "the killed worker was not replaced"
        deadline = time.monotonic() + 60
        while httpx.get(f"{srv.url}/readyz", timeout=10).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)
        stop.set()
        for c in clients:
            c.join(timeout=10)
        records = [r for c in clients for r in c.records]
        served_by_new = httpx.post(f"{srv.url}/classify", json={"model": name, "texts": ["x"]}, timeout=30)
        assert served_by_new.status_code == 200
    errors = [r for r in records if r[2] != "200"]
    during = [r for r in records if t_kill < r[0] < t_kill + replaced_after and r[2] == "200"]
    print(f"\n{len(records)} requests, {len(errors)} failed ({sorted({r[2] for r in errors})}); "
          f"{len(during)} answered while one worker was down; replaced after {replaced_after:.1f} s")
    assert len(errors) <= len(clients), errors  # one broken connection per client at most
    assert all(not r[2].isdigit() for r in errors), errors  # connection errors, never a 5xx
    assert len(during) >= 10  # the other worker kept serving


def test_a_model_file_corrupted_while_serving_keeps_serving_and_a_reload_refuses_it(smoke_models, names, tmp_path):
    name = names["text-classification"]
    registry = tmp_path / "registry"
    version_dir = copy_model(smoke_models, name, registry)
    body = {"model": name, "texts": ["what a lovely day", "my flight got cancelled again"], "top_k": 2}
    with serve(registry, tmp_path / "serve", env={"SERVICE_MODELS": json.dumps([name])}) as srv:
        before = httpx.post(f"{srv.url}/classify", json=body, timeout=30).json()
        graph = model_graph(version_dir)
        data = bytearray(graph.read_bytes())
        data[len(data) // 3: len(data) // 3 + 64] = b"\0" * 64
        graph.write_bytes(bytes(data))
        (version_dir / "tokenizer.json").write_text("{not json")
        for _ in range(20):
            after = httpx.post(f"{srv.url}/classify", json=body, timeout=30)
            assert after.status_code == 200 and after.json() == before
        assert httpx.get(f"{srv.url}/readyz", timeout=10).status_code == 200
    # what any reload does (a restarted worker, a new pod): the checksums refuse the version, naming no path
    probe = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(f"""
            import json
            from service.batcher import Traffic
            from service.models import load_model
            from service.settings import ServiceSettings
            m = load_model(ServiceSettings(registry={str(registry)!r}, warmup=False), {name!r}, None, Traffic())
            print(json.dumps({{"status": m.status, "reason": m.reason}}))
        """)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0 and probe.stdout.strip(), probe.stderr[-2000:]
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    reason = result["reason"].lower()
    assert result["status"] == "failed" and ("sha256" in reason or "checksum" in reason), result
    assert str(tmp_path) not in result["reason"], result


def test_prometheus_killed_while_scraping_leaves_the_service_unaffected(smoke_models, names, tmp_path):
    name = names["text-classification"]
    with serve(smoke_models, tmp_path / "serve", env={"SERVICE_MODELS": json.dumps([name])}) as srv:
        with Prometheus([srv.http_address], scrape_interval="1s") as prom:
            prom.wait_for('up{job="modelserve"}', lambda v: list(v.values()) == [1.0])
            stop = threading.Event()
            clients = [Load(srv.http_address, "/classify", {"model": name, "texts": ["a fine day"]}, stop)
                       for _ in range(4)]
            for c in clients:
                c.start()
            time.sleep(3)
            t_kill = time.monotonic()
            prom._proc.kill()  # SIGKILL, mid-scrape or not
            prom._proc.wait()
            time.sleep(3)
            stop.set()
            for c in clients:
                c.join(timeout=10)
        assert httpx.get(f"{srv.url}/metrics", timeout=10).status_code == 200
    records = [r for c in clients for r in c.records]
    assert records and all(r[2] == "200" for r in records), {r[2] for r in records}

    def p99(rs):
        ms = sorted((r[1] - r[0]) * 1000 for r in rs)
        return ms[int(0.99 * (len(ms) - 1))]

    scraped = [r for r in records if r[0] < t_kill]
    unscraped = [r for r in records if r[0] >= t_kill]
    print(f"\np99 while scraped {p99(scraped):.1f} ms ({len(scraped)} requests), after Prometheus died "
          f"{p99(unscraped):.1f} ms ({len(unscraped)})")
    assert len(unscraped) >= 0.5 * len(scraped)  # throughput did not collapse


FULL_DISK_SCRIPT = """
set -u
mount -t tmpfs -o size=4m tmpfs "$REG"
cp -r "$SEED" "$REG/$NAME"
used=$(df -k --output=used "$REG" | tail -1 | tr -d ' ')
mount -o remount,size=$((used + SPARE_KB))k "$REG"
df -k --output=size,used,avail "$REG" | tail -1 > "$OUT/df_before"
"$PY" -m training train --preset smoke --models "$NAME" --registry "$REG" --data-dir "$DATA" \\
    --set train.threads=1 > "$OUT/train.log" 2>&1
echo $? > "$OUT/exit"
df -k --output=size,used,avail "$REG" | tail -1 > "$OUT/df_after"
(cd "$REG" && find . | sort) > "$OUT/tree"
"$PY" -c "from pathlib import Path; from modelkit.registry import load_version; print(load_version(Path('$REG'), '$NAME')[0].version)" \\
    > "$OUT/loads" 2>&1
"""


@pytest.mark.parametrize("spare_kb", [128, 260])
def test_registry_disk_full_during_a_publish_leaves_nothing_half_written(smoke_models, names, tmp_path, spare_kb):
    """A real smoke training of the text classifier publishing into a registry with ``spare_kb`` free:
    the run fails (128 kB: while exporting; 260 kB: later, in quantization), and the registry holds
    exactly what it held before, the previous version still loads with its checksums, and the space
    is free again (the staging folder was removed)."""
    if not shutil.which("unshare"):
        pytest.skip("no unshare(1): cannot make a small private filesystem without privileges")
    probe = subprocess.run(["unshare", "--map-root-user", "--mount", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"user and mount namespaces are not available here: {probe.stderr.strip()}")
    name = names["text-classification"]
    seed = tmp_path / "seed"
    copy_model(smoke_models, name, seed)
    reg, out, data = tmp_path / "registry", tmp_path / "out", tmp_path / "data"
    reg.mkdir()
    out.mkdir()
    env = {**os.environ, "REG": str(reg), "SEED": str(seed / name), "NAME": name, "OUT": str(out),
           "DATA": str(data), "SPARE_KB": str(spare_kb), "PY": sys.executable, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(["unshare", "--map-root-user", "--mount", "sh", "-c", FULL_DISK_SCRIPT], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    log = (out / "train.log").read_text()
    print(f"\nspare {spare_kb} kB: {[line for line in log.splitlines() if 'Error' in line][-1:]}")
    assert (out / "exit").read_text().strip() == "1", log[-2000:]
    assert "No space left on device" in log
    seed_version = (seed / name / "LATEST").read_text().strip()
    expected = sorted({".", f"./{name}", f"./{name}/LATEST", f"./{name}/{seed_version}"}
                      | {f"./{name}/{seed_version}/{p.relative_to(seed / name / seed_version)}"
                         for p in (seed / name / seed_version).rglob("*")})
    assert sorted((out / "tree").read_text().split()) == expected  # no new version, no staging folder
    assert (out / "loads").read_text().strip() == seed_version
    assert (out / "df_before").read_text() == (out / "df_after").read_text()  # the partial files are gone
