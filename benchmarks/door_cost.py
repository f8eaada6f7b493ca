"""What each HTTP door costs the event loop, in-process: the service's ``Front`` without uvicorn or sockets.

One model is loaded as the service loads it (``Worker.start``, its batcher and model thread);
``C`` asyncio clients (default 32) send one-item requests straight into the ``Front`` ASGI
callable, each door's exact request bytes (the JSON API's body; ``tritonclient.http``'s bytes
for OIP REST). Measured per round: the main thread's CPU per request (the event loop: the
front, the door, the dataplane, the batcher's hand-offs; not the model thread) and requests/s.
The doors alternate round by round, so a drift of the machine reaches each door alike. What the
server adds on top (uvicorn's HTTP, sockets) is the same for every door; ``request_profile.py``
measures that part through the real server.

    .venv/bin/python benchmarks/door_cost.py --registry exported --model sentiment [--rounds 4]

Prints a table (each round's figure, and the median); writes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from service_bench import ENDPOINTS, oip_rest_body, sample_item  # noqa: E402

DOORS = ("json", "oip-rest")


def door_request(door: str, name: str, task: str) -> tuple[str, bytes, list[tuple[bytes, bytes]]]:
    """(path, body, headers) a client of ``door`` sends for one item."""
    item, body = sample_item(task)
    if door == "json":
        payload = json.dumps({"model": name, **body}).encode()
        return ENDPOINTS[task], payload, [(b"content-type", b"application/json")]
    payload, headers = oip_rest_body(task, item)
    return f"/v2/models/{name}/infer", payload, [(k.lower().encode(), v.encode()) for k, v in headers.items()]


def scope_for(path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> dict:
    return {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
            "headers": [(b"host", b"127.0.0.1"), (b"content-length", str(len(body)).encode()), *headers],
            "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 3000), "scheme": "http", "http_version": "1.1",
            "root_path": ""}


async def drive(front, scope: dict, body: bytes, requests: int, clients: int) -> tuple[float, float, int]:
    """(main-thread CPU us per request, requests/s, non-200 answers)."""
    statuses: list[int] = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def client(n: int) -> None:
        for _ in range(n):
            await front(dict(scope), receive, send)

    cpu0, t0 = time.thread_time(), time.perf_counter()
    await asyncio.gather(*(client(requests // clients) for _ in range(clients)))
    cpu, wall = time.thread_time() - cpu0, time.perf_counter() - t0
    return cpu / len(statuses) * 1e6, len(statuses) / wall, sum(s != 200 for s in statuses)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--registry", type=Path, default=Path(os.environ.get("MODEL_REGISTRY", ROOT / "exported")))
    ap.add_argument("--model", default="sentiment")
    ap.add_argument("--doors", default=",".join(DOORS))
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--requests", type=int, default=4000, help="requests per door per round")
    ap.add_argument("--clients", type=int, default=32)
    args = ap.parse_args(argv)
    os.environ["MODEL_REGISTRY"] = str(args.registry)
    os.environ["SERVICE_MODELS"] = json.dumps([args.model])

    from modelkit.registry import load_version
    from service import telemetry
    from service.front import Front
    from service.guard import Guard
    from service.settings import ServiceSettings
    from service.worker import Worker, settle_garbage_collector

    settings = ServiceSettings()
    guard = Guard(settings)
    telemetry.enable_buffering(settings.metrics_flush_s)
    worker = Worker.start(settings)
    settle_garbage_collector(settings.gc_thresholds)  # as the service does once its models are loaded
    manifest, _ = load_version(args.registry, args.model)
    front = Front(None, lambda: worker, lambda: guard)
    doors = args.doors.split(",")
    requests = {d: door_request(d, args.model, manifest.task) for d in doors}
    figures: dict[str, list[tuple[float, float, int]]] = {d: [] for d in doors}

    async def run() -> None:
        worker.lifecycle.start()
        for door in doors:  # warm-up
            path, body, headers = requests[door]
            await drive(front, scope_for(path, body, headers), body, 512, args.clients)
        for _ in range(args.rounds):
            for door in doors:
                path, body, headers = requests[door]
                figures[door].append(await drive(front, scope_for(path, body, headers), body, args.requests,
                                                 args.clients))
        await worker.lifecycle.stop()

    asyncio.run(run())
    print(f"{args.model} {manifest.version}, {args.clients} clients, {args.requests} requests a round, doors alternating")
    print("| door | event-loop CPU us/request, each round | median | requests/s, median | non-200 |")
    print("|---|---|---:|---:|---:|")
    for door in doors:
        cpu = [f[0] for f in figures[door]]
        rate = [f[1] for f in figures[door]]
        print(f"| {door} | {' '.join(f'{c:.1f}' for c in cpu)} | {statistics.median(cpu):.1f} | "
              f"{statistics.median(rate):,.0f} | {sum(f[2] for f in figures[door])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
