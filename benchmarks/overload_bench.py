"""Overload: many clients sending far more translation work than the model can do; how they are answered.

The scenario of issue 13: each client sends 64 long sentences with beam search 4, again and
again, with a 30 s client timeout. Before admission control the queue was bounded in items only,
so most clients waited until their own timeout. Now a request whose deadline (``X-Request-Timeout``,
else the endpoint's default) cannot be met is answered 503 + Retry-After at once, and the
accepted ones finish in time. Prints, per run, the answers by status and their latency.

    .venv/bin/python benchmarks/overload_bench.py --registry exported [--model de-en] [--clients 64]

Replaces its section of benchmarks/RESULTS.md (``--no-write`` to only print).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SECTION_START = "<!-- overload_bench:start -->"
SECTION_END = "<!-- overload_bench:end -->"
SENTENCE = "Das ist ein ziemlich langer Satz über das Wetter in Berlin und die Leute, die dort wohnen."


def translate_body(model: str, n: int = 64, beams: int = 4, max_new_tokens: int = 64) -> dict:
    return {"model": model, "texts": [SENTENCE] * n, "num_beams": beams, "max_new_tokens": max_new_tokens}


async def drive(url: str, body: dict, *, clients: int, seconds: float, headers: dict | None = None,
                client_timeout: float = 30.0, path: str = "/translate", honor_retry_after: bool = False) -> list[dict]:
    """``clients`` callers each sending ``body`` back to back for ``seconds``; one record per request.

    ``honor_retry_after``: a refused client waits what Retry-After says before its next request
    (otherwise it sends again at once, the worst case for the server)."""
    stop = time.monotonic() + seconds
    records: list[dict] = []

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=client_timeout, headers=headers or {}) as http:
            while time.monotonic() < stop:
                t0 = time.monotonic()
                try:
                    resp = await http.post(path, json=body)
                    status, retry_after = str(resp.status_code), resp.headers.get("retry-after")
                except httpx.HTTPError as exc:
                    status, retry_after = f"client:{type(exc).__name__}", None
                records.append({"start": t0, "seconds": time.monotonic() - t0, "status": status,
                                "retry_after": retry_after})
                if status in ("503", "429"):
                    await asyncio.sleep(float(retry_after) if honor_retry_after and retry_after else 0.0)

    await asyncio.gather(*(client() for _ in range(clients)))
    return records


async def drive_grpc(address: str, model: str, *, clients: int, seconds: float, deadline_s: float,
                     n: int = 64, beams: int = 4) -> list[dict]:
    """The same load through the gRPC door (tritonclient's generated stubs), ``deadline_s`` per call."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    request = pb.ModelInferRequest(model_name=model, inputs=[pb.ModelInferRequest.InferInputTensor(
        name="text", datatype="BYTES", shape=[n], contents=pb.InferTensorContents(
            bytes_contents=[SENTENCE.encode()] * n))])
    request.parameters["num_beams"].int64_param = beams
    stop = time.monotonic() + seconds
    records: list[dict] = []

    async def client() -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while time.monotonic() < stop:
                t0 = time.monotonic()
                retry_after = None
                try:
                    await stub.ModelInfer(request, timeout=deadline_s)
                    status = "OK"
                except grpc.aio.AioRpcError as err:
                    status = err.code().name
                    retry_after = dict(err.trailing_metadata() or ()).get("retry-after")
                records.append({"start": t0, "seconds": time.monotonic() - t0, "status": status,
                                "retry_after": retry_after})

    await asyncio.gather(*(client() for _ in range(clients)))
    return records


def probe(url: str, body: dict, headers: dict, seconds: float, every_s: float, out) -> None:
    """In its own process: one request every ``every_s`` (one keep-alive connection, the standard
    library's client) for ``seconds``; puts the records on ``out``. The flood's 64 coroutines share
    one event loop whose own queueing lands in their latencies; the probe measures what one more
    caller waits for its answer while the flood goes on."""
    import http.client
    from urllib.parse import urlsplit

    target = urlsplit(url)
    payload = json.dumps(body).encode()
    records, stop = [], time.monotonic() + seconds
    conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
    while time.monotonic() < stop:
        t0 = time.monotonic()
        try:
            conn.request("POST", "/translate", payload, {"content-type": "application/json", **headers})
            resp = conn.getresponse()
            resp.read()
            status, retry_after = str(resp.status), resp.getheader("retry-after")
        except (OSError, http.client.HTTPException) as exc:
            status, retry_after = f"client:{type(exc).__name__}", None
            conn.close()
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
        records.append({"start": t0, "seconds": time.monotonic() - t0, "status": status, "retry_after": retry_after})
        time.sleep(max(0.0, every_s - (time.monotonic() - t0)))
    out.put(records)


def with_probe(url: str, body: dict, headers: dict, seconds: float, flood) -> tuple[list[dict], list[dict]]:
    """Run ``flood()`` (the clients) with a probe process beside it; (flood records, probe records)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")  # the child needs nothing but this function
    out = ctx.Queue()
    proc = ctx.Process(target=probe, args=(url, body, headers, seconds, 0.1, out), daemon=True)
    proc.start()
    records = flood()
    probed = out.get(timeout=seconds + 120)
    proc.join(timeout=10)
    return records, probed


def latency_buckets(metrics_text: str, endpoint: str, status: str) -> dict[str, float]:
    """Answers with ``status`` at ``endpoint`` by histogram bound (``le`` -> cumulative count, every door and
    worker summed), from the service's own request-duration histogram."""
    counts: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if not line.startswith("modelserve_request_duration_seconds_bucket{"):
            continue
        if f'endpoint="{endpoint}"' not in line or f'status="{status}"' not in line:
            continue
        le = re.search(r'[{,]le="([^"]*)"', line).group(1)
        counts[le] = counts.get(le, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def answered_within(metrics_text: str, endpoint: str, status: str, seconds: str = "0.1") -> tuple[float, float]:
    """(answers with ``status`` at ``endpoint`` within ``seconds``, all of them), from the service's own
    request-duration histogram: the time the service took, without the client's own delays."""
    counts = latency_buckets(metrics_text, endpoint, status)
    return counts.get(seconds, 0.0), counts.get("+Inf", 0.0)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def summarize(records: list[dict]) -> dict:
    """Counts by status, p50/p99 latency (ms) by status, refusals without Retry-After, client-side errors."""
    by: dict[str, list[float]] = {}
    for r in records:
        by.setdefault(r["status"], []).append(r["seconds"])
    return {
        "requests": len(records),
        "status": {k: len(v) for k, v in sorted(by.items())},
        "p50_ms": {k: round(1000 * _percentile(v, 0.50), 1) for k, v in sorted(by.items())},
        "p99_ms": {k: round(1000 * _percentile(v, 0.99), 1) for k, v in sorted(by.items())},
        "refused_without_retry_after": sum(1 for r in records if r["status"] in ("429", "503") and not r["retry_after"]),
        "client_errors": sum(1 for r in records if r["status"].startswith("client:")),
    }


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from service_bench import Server, machine, versions, write_results

    from modelkit.registry import latest_version

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--registry", type=Path, default=ROOT / "exported")
    parser.add_argument("--model", default="de-en")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--client-timeout", type=float, default=30)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    body = translate_body(args.model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(args.registry, {"SERVICE_MODELS": json.dumps([args.model])}, Path(tmp))
        try:
            server.wait_ready()
            httpx.post(f"{server.url}/translate", json=body, timeout=120)  # measured once: admission knows the cost
            for label, headers in (("no X-Request-Timeout (server default for /translate)", {}),
                                   ("X-Request-Timeout: 2", {"X-Request-Timeout": "2"})):
                before = httpx.get(f"{server.url}/metrics", timeout=30).text
                records, probed = with_probe(server.url, body, headers, args.seconds, lambda: asyncio.run(drive(
                    server.url, body, clients=args.clients, seconds=args.seconds, headers=headers,
                    client_timeout=args.client_timeout)))
                summary = summarize(records)
                summary["probe"] = summarize(probed)
                after = httpx.get(f"{server.url}/metrics", timeout=30).text
                (w1, t1), (w0, t0) = answered_within(after, "/translate", "503"), answered_within(before, "/translate", "503")
                summary["service_503_within_100ms"] = f"{w1 - w0:.0f} of {t1 - t0:.0f}"
                print(label, json.dumps(summary))
                rows.append((label, summary))
        finally:
            server.stop()
    lines = [
        "## Overload (benchmarks/overload_bench.py)", "",
        f"- machine: {machine()}; {versions()}",
        f"- model {args.model} {latest_version(args.registry, args.model)} ({args.registry}); {args.clients} clients, "
        f"each sending 64 sentences, beam 4, max 64 new tokens, back to back for {args.seconds:.0f} s; client "
        f"timeout {args.client_timeout:.0f} s; measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "- client latencies include the flood's own event loop (64 coroutines, one process, on the same cores); "
        "the probe is one more caller in its own process sending the same request every 100 ms during the flood", "",
        "| run | requests | 200 | 503 (Retry-After) | 504 | client timeouts/errors | 200 p50 / p99 ms | 503 p50 / p99 ms "
        "(client) | 503 within 100 ms (service) | probe: 503 p50 / p99 ms (requests, 200s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, s in rows:
        st, p50, p99 = s["status"], s["p50_ms"], s["p99_ms"]
        lines.append(f"| {label} | {s['requests']} | {st.get('200', 0)} | {st.get('503', 0)} "
                     f"({st.get('503', 0) - s['refused_without_retry_after']}) | {st.get('504', 0)} | "
                     f"{s['client_errors']} | {p50.get('200', '-')} / {p99.get('200', '-')} | "
                     f"{p50.get('503', '-')} / {p99.get('503', '-')} | {s['service_503_within_100ms']} | "
                     f"{s['probe']['p50_ms'].get('503', '-')} / {s['probe']['p99_ms'].get('503', '-')} "
                     f"({s['probe']['requests']}, {s['probe']['status'].get('200', 0)}) |")
    if not args.no_write:
        write_results(ROOT / "benchmarks" / "RESULTS.md", "\n".join(lines), SECTION_START, SECTION_END)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
