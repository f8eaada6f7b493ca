"""benchmarks/service_bench.py runs end to end: raw onnxruntime, the real `bentoml serve`, wrk and hey.

Tiny request counts on the smoke models: this checks the script and its parsing of the load
generators' output, not speed (the numbers live in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from service_support import benchmark_module, names_by_task, smoke_models  # noqa: F401  (fixture)



def _rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 16 and cells[0] not in ("model", "---"):
            rows[cells[0]] = cells
    return rows


@pytest.mark.parametrize("client", ["wrk", "hey"])
def test_service_bench_measures_raw_and_service_with_zero_errors(smoke_models, tmp_path, client):  # noqa: F811
    by_task = names_by_task(smoke_models)
    models = [by_task["text-classification"], by_task["image-classification"]]
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\nkept text\n")
    rc = benchmark_module("service_bench").main(["--registry", str(smoke_models), "--models", ",".join(models), "--client", client,
                        "--requests-1", "40", "--requests-32", "320", "--raw-iters", "20", "--multi-items", "4",
                        "--timeout", "120", "--rounds", "2", "--results", str(results)])
    assert rc == 0
    text = results.read_text()
    assert "kept text" in text and f"load generator {client}" in text
    rows = _rows(text)
    assert set(rows) == set(models)
    for name in models:
        cells = rows[name]
        raw_b32, service_items_s, errors = (float(cells[i].replace(",", "")) for i in (2, 7, 10))
        assert raw_b32 > 0 and service_items_s > 0
        assert errors == 0, cells
        assert re.fullmatch(r"(PASS|FAIL) \(\d+\.\d\dx\)", cells[14])
        client_cpu = float(cells[13])
        assert 0 < client_cpu < 5, cells  # the generator's own CPU per request, in ms
    multi = re.findall(r"^\| (\S+) \| ([\d,]+) \| ([\d.]+)x \|", text, flags=re.M)
    assert {m[0] for m in multi} == set(models)
    doors = {(c[0], c[1]): c for c in (line.strip().strip("|").split("|") for line in text.splitlines())
             if len(c) == 15 and c[1].strip() in ("json", "oip-rest", "oip-grpc")}
    doors = {(k[0].strip(), k[1].strip()): [x.strip() for x in v] for k, v in doors.items()}
    assert set(doors) == {(m, d) for m in models for d in ("json", "oip-rest", "oip-grpc")}
    each_round = {}
    for key, cells in doors.items():
        assert float(cells[4].replace(",", "")) > 0 and cells[10] == "0", cells  # items/s, errors
        assert float(cells[11]) > 0  # server CPU per item
        rounds = [float(x.replace(",", "")) for x in cells[14].split(" / ")]
        assert len(rounds) == 2 and float(cells[4].replace(",", "")) == min(rounds), cells  # the lower middle of two
        each_round[key] = rounds
    for (name, door), cells in doors.items():  # each round's rate over the JSON door's in that round
        if door == "json":
            assert cells[7] == "-", cells
            continue
        ratios = [r / j for r, j in zip(each_round[(name, door)], each_round[(name, "json")])]
        shown = re.fullmatch(r"([\d.]+) / ([\d.]+) \(([\d.]+)x\)", cells[7])
        assert shown, cells
        # the shown rates are rounded to whole items/s, the ratios to two decimals
        assert [float(x) for x in shown.groups()[:2]] == pytest.approx(ratios, abs=0.011), cells
        assert float(shown.group(3)) == pytest.approx(sum(ratios) / 2, abs=0.011), cells


def test_wrk_counts_non_200_answers_as_errors(smoke_models, tmp_path):  # noqa: F811
    """A request the service refuses (unknown model: 404) is an error in the wrk runner's count."""
    from service_support import serve

    bench = benchmark_module("service_bench")
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"model": "no-such-model", "texts": ["hello"]}))
    with serve(smoke_models, tmp_path) as server:
        load = bench.wrk(f"{server.url}/classify", body, 50, 4, 60)
    assert load.errors == 50 and load.ok == 0


def test_grpc_errors_inside_http_200_are_counted(smoke_models, tmp_path):  # noqa: F811
    """h2load sees HTTP 200 for a gRPC NOT_FOUND; the server's own count makes it an error."""
    bench = benchmark_module("service_bench")
    name = names_by_task(smoke_models)["text-classification"]
    server = bench.Server(smoke_models, {}, tmp_path)
    try:
        server.wait_ready()
        req = bench.door_request("oip-grpc", server, "no-such-model", "text-classification", "hello", {}, "wrk")
        body = tmp_path / "grpc.body"
        body.write_bytes(req.body)
        load = bench.counted(server, req, body, 40, 4, 60)
        assert load.errors == 40 and load.ok == 0
        good = bench.door_request("oip-grpc", server, name, "text-classification", "hello", {}, "wrk")
        body.write_bytes(good.body)
        load = bench.counted(server, good, body, 40, 4, 60)
        assert load.errors == 0 and load.ok == 40
    finally:
        server.stop()


def test_h2load_runs_count_only_their_own_requests(tmp_path, monkeypatch):
    """h2load appends to its --log-file: a run must not count the rows an earlier run (the warm-up) left there."""
    bench = benchmark_module("service_bench")
    calls = []

    def fake_run(cmd, **kwargs):  # writes its rows the way h2load does: appended, start/status/duration in us
        n = int(cmd[cmd.index("-n") + 1])
        log = Path(cmd[cmd.index("--log-file") + 1])
        with log.open("a") as f:
            for i in range(n):
                f.write(f"{1_000_000 * len(calls) + 1000 * i}\t200\t{500 if not calls else 2000}\n")
        calls.append(n)

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    body = tmp_path / "g.body"
    body.write_bytes(b"x")
    warm = bench.h2load("http://127.0.0.1:1/x", body, 200, 8, 10)
    one = bench.h2load("http://127.0.0.1:1/x", body, 50, 1, 10)
    assert (warm.ok, warm.requests) == (200, 200)
    assert (one.ok, one.requests, one.errors) == (50, 50, 0) and one.p50_ms == one.p99_ms == 2.0, one


def test_oip_clients_bench_drives_both_doors_through_tritonclient(smoke_models, tmp_path):  # noqa: F811
    module = benchmark_module("oip_clients_bench")
    by_task = names_by_task(smoke_models)
    models = [by_task["text-classification"], by_task["image-classification"]]
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n")
    assert module.main(["--registry", str(smoke_models), "--models", ",".join(models), "--clients", "1,4",
                        "--requests", "40", "--results", str(results)]) == 0
    doors = ("json", "oip-rest", "oip-grpc")
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in results.read_text().splitlines()
            if line.startswith("| ") and line.split("|")[2].strip() in doors]
    assert {(r[0], r[1], r[2]) for r in rows} == {(m, d, c) for m in models for d in doors for c in ("1", "4")}
    for r in rows:
        assert r[7] == "0" and float(r[4].replace(",", "")) > 0, r  # no errors, a rate


def test_lifecycle_bench_promotes_and_rolls_back_under_load(smoke_models, tmp_path):
    module = benchmark_module("lifecycle_bench")
    name = names_by_task(smoke_models)["text-classification"]
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n")
    assert module.main(["--registry", str(smoke_models), "--model", name, "--seconds", "16", "--clients", "4",
                        "--poll", "0.5", "--results", str(results)]) == 0  # non-zero: a non-200 answer
    rows = dict(re.findall(r"^\| ([^|]+) \| ([^|]+) \|$", results.read_text(), flags=re.M))
    answers, bad = (int(x) for x in rows["answers / non-200"].split(" / "))
    assert answers > 100 and bad == 0
    for key in ("every answer from B after the promote", "every answer from A after the rollback"):
        assert float(rows[key].split(" s")[0]) < 6, rows[key]  # each worker switched, within poll + load + noise


def test_shadow_bench_runs_with_and_without_a_shadow(smoke_models, tmp_path):
    module = benchmark_module("shadow_bench")
    name = names_by_task(smoke_models)["text-classification"]
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n")
    assert module.main(["--registry", str(smoke_models), "--model", name, "--requests", "200",
                        "--results", str(results)]) == 0
    rows = {c[0]: c for c in ([x.strip() for x in line.strip().strip("|").split("|")]
                              for line in results.read_text().splitlines() if line.startswith("| ")) if len(c) == 8}
    assert float(rows["no rollout"][7].replace(",", "")) == 0 and rows["no rollout"][5] == "0"
    mirrored = float(rows["shadow, share 1.0"][7].replace(",", ""))
    tenth = float(rows["shadow, share 0.1"][7].replace(",", ""))
    # every request compared (a few more: wrk's last in-flight requests), unless the candidate was backed up
    assert mirrored >= 150 and tenth < mirrored / 2, rows


@pytest.mark.parametrize("door", ["json", "oip-grpc"])
def test_request_profile_attributes_the_worker_cpu_per_request(smoke_models, tmp_path, door, capsys):  # noqa: F811
    """py-spy over a short run (wrk, or h2load for a duration on the gRPC door): a layer table that adds up."""
    by_task = names_by_task(smoke_models)
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n")
    rc = benchmark_module("request_profile").main(["--registry", str(smoke_models), "--model", by_task["text-classification"],
                                         "--door", door, "--seconds", "3", "--results", str(results)])
    assert rc == 0
    text = results.read_text()
    assert f"request_profile:{door}:start" in text
    answers = int(re.search(r"; ([\d,]+) answers;", text).group(1).replace(",", ""))
    assert answers > 50
    shares = [float(m) for m in re.findall(r"^\| event loop: .*? \| ([\d.]+)% \|", text, flags=re.M)]
    assert shares and abs(sum(shares) - 100) < 1.5, shares
    total = float(re.search(r"the worker, every thread\*\* \| \| \*\*([\d.]+)\*\*", text).group(1))
    assert 0 < total < 50, total  # ms of worker CPU per request


def test_door_cost_measures_each_http_door_in_process(smoke_models, tmp_path):  # noqa: F811
    """The in-process front: every door answered (no non-200), a CPU figure per round and door."""
    import subprocess
    import sys

    name = names_by_task(smoke_models)["text-classification"]
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "door_cost.py"), "--registry", str(smoke_models),
                          "--model", name, "--rounds", "2", "--requests", "64", "--clients", "8"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {r[0]: r for r in ([c.strip() for c in line.strip().strip("|").split("|")]
                              for line in out.stdout.splitlines() if line.startswith("| oip") or line.startswith("| json"))}
    assert set(rows) == {"json", "oip-rest"}, out.stdout
    for door, (_, rounds, median, rate, failed) in rows.items():
        assert len(rounds.split()) == 2 and float(median) > 0 and float(rate.replace(",", "")) > 0, rows
        assert failed == "0", (door, rows)
