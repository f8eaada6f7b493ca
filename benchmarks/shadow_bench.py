"""What a shadow rollout costs the primary: p50 / p99 at 8 clients with and without a shadow candidate.

The real ``bentoml serve`` (1 worker) serves the model's LATEST and a copy of it under another
version id (the same cost); ``wrk`` sends one item per request at 8 clients (a fixed number of
responses) three times: without a rollout, with the copy shadowing every request (share 1.0) and
a tenth of them (share 0.1). The client only ever waits for the primary, so its latency is the
primary's. Also reported: the server's CPU per answered request and the shadow comparisons counted.

    .venv/bin/python benchmarks/shadow_bench.py --registry exported --model sentiment

Prints a table and replaces its own section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from lifecycle_bench import ENDPOINTS, make_registry  # noqa: E402
from service_bench import Server, _get, machine, sample_item, versions, wrk, write_results  # noqa: E402

from modelkit.registry import load_version  # noqa: E402

SECTION_START = "<!-- shadow_bench:start -->"
SECTION_END = "<!-- shadow_bench:end -->"


def shadow_count(server: Server, model: str) -> float:
    text = _get(f"{server.url}/metrics")
    return sum(float(v) for v in re.findall(rf'modelserve_shadow_comparisons_total\{{[^}}]*model="{model}"[^}}]*\}} (\S+)',
                                             text))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--registry", type=Path, default=Path(os.environ.get("MODEL_REGISTRY", ROOT / "exported")))
    ap.add_argument("--model", default="sentiment")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=6000)
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)

    manifest, _ = load_version(args.registry, args.model)
    _, body = sample_item(manifest.task)
    rows = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="shadow-bench-") as tmp:
        registry = Path(tmp) / "registry"
        a, b = make_registry(args.registry, args.model, registry)
        body_file = Path(tmp) / "body.json"
        body_file.write_text(json.dumps(body | {"model": args.model}))
        for label, rollout in (("no rollout", None), ("shadow, share 1.0", 1.0), ("shadow, share 0.1", 0.1),
                               ("no rollout (again)", None)):
            env = {"SERVICE_MODELS": json.dumps([args.model])}
            if rollout is not None:
                env["SERVICE_ROLLOUTS"] = json.dumps({args.model: {"candidate": b, "mode": "shadow", "share": rollout}})
            server = Server(registry, env, Path(tmp))
            try:
                server.wait_ready()
                url = server.url + ENDPOINTS[manifest.task]
                wrk(url, body_file, 300, args.clients, 120)  # warm-up
                before = shadow_count(server, args.model)
                cpu0 = server.cpu_seconds()
                load = wrk(url, body_file, args.requests, args.clients, 240)
                cpu = server.cpu_seconds() - cpu0
                time.sleep(1.0)  # the last mirrored requests
                mirrored = shadow_count(server, args.model) - before
            finally:
                server.stop()
            print(f"[{label}] p50 {load.p50_ms:.2f} ms, p99 {load.p99_ms:.2f} ms, {load.items_s:,.0f}/s", flush=True)
            rows.append((label, load, 1000 * cpu / max(load.ok, 1), mirrored))
    load_after = os.getloadavg()
    base = (rows[0][1].p50_ms + rows[-1][1].p50_ms) / 2
    table = ("| run | requests/s | p50 ms | p99 ms | p50 vs no rollout | errors | server CPU ms/request | "
             "items compared |\n|---|---:|---:|---:|---:|---:|---:|---:|\n")
    for label, load, cpu, mirrored in rows:
        table += (f"| {label} | {load.items_s:,.0f} | {load.p50_ms:.2f} | {load.p99_ms:.2f} | "
                  f"{load.p50_ms / base - 1:+.1%} | {load.errors} | {cpu:.2f} | {mirrored:,.0f} |\n")
    header = (
        "## Shadow rollout cost (benchmarks/shadow_bench.py)\n\n"
        f"- machine: {machine()}\n- versions: {versions()}\n"
        f"- settings: 1 worker, {args.clients} clients (wrk), one item per request, {args.requests} requests per run; "
        f"the candidate is a copy of the primary ({args.model} {a} / {b}, registry {args.registry}); "
        "'p50 vs no rollout' compares with the mean of the two runs without a rollout\n"
        f"- measured {time.strftime('%Y-%m-%d %H:%M %Z')}; load average (1 min) {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after\n\n"
    )
    print()
    print(header + table)
    if not args.no_write:
        write_results(args.results, header + table, SECTION_START, SECTION_END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
