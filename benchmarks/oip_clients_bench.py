"""The Open Inference Protocol doors driven by tritonclient's own clients (HTTP and gRPC, asyncio),
beside the task JSON API driven by aiohttp (what tritonclient.http.aio sends with): the same Python load on
all three doors.

Triton's perf_analyzer cannot be installed here (PyPI's ``perf-analyzer`` is a placeholder), so
this is the load a Python team using ``tritonclient`` puts on the service: ``tritonclient.http.aio``
(binary tensor data extension, its default) and ``tritonclient.grpc.aio``, ``--clients`` concurrent
callers each sending one item per request, a fixed number of requests, against a real
``bentoml serve``. The client is Python: on a small machine it takes CPU from the service, so the
client's CPU per request is printed beside the rates (benchmarks/service_bench.py measures the
doors with C load generators instead).

    .venv/bin/python benchmarks/oip_clients_bench.py --registry exported [--models sentiment,fashion]

Prints a table and replaces its own section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from service_bench import ENDPOINTS, Server, machine, oip_input, sample_item, versions, write_results  # noqa: E402

from modelkit.registry import load_version  # noqa: E402

SECTION_START = "<!-- oip_clients_bench:start -->"
SECTION_END = "<!-- oip_clients_bench:end -->"


def door_client(door: str, address: str, name: str, task: str, item, body: dict):
    """(infer, close) for one door: ``await infer()`` sends one request and says whether it was answered."""
    if door == "json":
        import aiohttp  # what tritonclient.http.aio sends with, so the three doors get the same client work

        session = aiohttp.ClientSession(f"http://{address}", connector=aiohttp.TCPConnector(limit=100))
        payload = json.dumps({"model": name, **body}).encode()
        path, headers = ENDPOINTS.get(task, "/translate"), {"content-type": "application/json"}

        async def infer() -> bool:
            async with session.post(path, data=payload, headers=headers) as response:
                return response.status == 200 and bool((await response.json()).get("results"))

        return infer, session.close
    if door == "oip-rest":
        import tritonclient.http.aio as module
    else:
        import tritonclient.grpc.aio as module
    triton = module.InferenceServerClient(address)
    tensor = oip_input(module, task, item)
    output = "translation" if task == "translation" else "label"

    async def infer() -> bool:
        return (await triton.infer(name, [tensor])).as_numpy(output) is not None

    return infer, triton.close


async def drive(door: str, address: str, name: str, task: str, item, body: dict, clients: int, requests: int) -> dict:
    """``requests`` inferences from ``clients`` concurrent callers; latency per request, errors, CPU."""
    infer, close = door_client(door, address, name, task, item, body)
    latencies: list[float] = []
    errors = 0
    remaining = requests

    async def caller() -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            try:
                if not await infer():
                    errors += 1
            except Exception:
                errors += 1
            latencies.append(time.perf_counter() - t0)

    try:
        await infer()  # connect and warm up
        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(clients)))
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        await close()
    lat = np.array(latencies)
    return {"door": door, "clients": clients, "requests": requests, "errors": errors,
            "items_s": (requests - errors) / elapsed, "p50_ms": 1000 * float(np.median(lat)),
            "p99_ms": 1000 * float(np.percentile(lat, 99)), "client_cpu_ms": 1000 * cpu / requests}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--registry", type=Path, default=Path(os.environ.get("MODEL_REGISTRY", ROOT / "exported")))
    ap.add_argument("--models", default="sentiment,fashion")
    ap.add_argument("--clients", default="1,16", help="concurrent callers, comma-separated")
    ap.add_argument("--requests", type=int, default=2000, help="requests per run")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)

    names = args.models.split(",")
    env = {"SERVICE_WORKERS": str(args.workers), "SERVICE_PROVIDER": "cpu", "SERVICE_MODELS": json.dumps(names)}
    rows = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="oip-clients-bench-") as tmp:
        server = Server(args.registry, env, Path(tmp))
        try:
            server.wait_ready()
            for name in names:
                manifest, _ = load_version(args.registry, name)
                item, body = sample_item(manifest.task)
                http = server.url.removeprefix("http://")
                for door, address in (("json", http), ("oip-rest", http), ("oip-grpc", server.grpc_address)):
                    for clients in (int(c) for c in args.clients.split(",")):
                        print(f"[{name}] {door}, {clients} client(s) ...", flush=True)
                        cpu0 = server.cpu_seconds()
                        row = asyncio.run(drive(door, address, name, manifest.task, item, body, clients, args.requests))
                        row["server_cpu_ms"] = 1000 * (server.cpu_seconds() - cpu0) / args.requests
                        rows.append((name, manifest.version, row))
        finally:
            server.stop()
    load_after = os.getloadavg()
    table = ("| model | door | clients | requests | items/s | p50 ms | p99 ms | errors | server CPU ms/item "
             "| client CPU ms/request |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    for name, _, r in rows:
        table += (f"| {name} | {r['door']} | {r['clients']} | {r['requests']} | {r['items_s']:,.0f} | "
                  f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} | {r['server_cpu_ms']:.2f} | "
                  f"{r['client_cpu_ms']:.2f} |\n")
    header = (
        "## OIP doors through tritonclient, beside the JSON API (benchmarks/oip_clients_bench.py)\n\n"
        f"- machine: {machine()}\n- versions: {versions()}\n"
        f"- settings: provider cpu, fp32, {args.workers} worker(s), the service's default threads and batching; "
        "tritonclient.http.aio (binary tensor data, its default), tritonclient.grpc.aio and, for the JSON API, "
        "aiohttp (tritonclient.http.aio's own HTTP client), in one Python process "
        f"on the same cores, one item per request, {args.requests} requests per run\n"
        f"- models: {', '.join(sorted({f'{n} {v}' for n, v, _ in rows}))} (registry {args.registry})\n"
        f"- measured {time.strftime('%Y-%m-%d %H:%M %Z')}; load average (1 min) {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after\n- the Python client's CPU per request comes out of the same cores as the "
        "service's: at 16 clients the client, not the service, is what limits these rates on a 2-core machine\n\n"
    )
    print()
    print(header + table)
    if not args.no_write:
        write_results(args.results, header + table, SECTION_START, SECTION_END)
        print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
