"""The same 32-client load on one server several times: how much a figure moves from run to run.

``service_bench.py`` measures each door once per server; on a shared 2-core virtual machine one run
can differ from the next by 1.5x. This starts the real ``bentoml serve`` (1 worker) with one model,
warms it up, then sends the same ``wrk`` load ``--runs`` times and prints, per run, items/s, p50,
the server's CPU per item and the mean batch size (from its own ``/metrics``). Comparing two
commits: run it in each checkout, interleaved, and compare the spreads, not single runs.

    .venv/bin/python benchmarks/repeat_load.py --registry exported --model sentiment [--door json] [--runs 4]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from service_bench import _get, one_model_door  # noqa: E402

from modelkit.registry import load_version  # noqa: E402

COUNTERS = ("modelserve_items_total", "modelserve_batches_total")


def counters(url: str) -> dict[str, float]:
    """Items and model calls the server has counted so far (every model, every version)."""
    text = _get(f"{url}/metrics")
    return {name: sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))
            for name in COUNTERS}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--registry", type=Path, default=Path(os.environ.get("MODEL_REGISTRY", ROOT / "exported")))
    ap.add_argument("--model", default="sentiment")
    ap.add_argument("--door", default="json", choices=["json", "oip-rest"])
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--requests", type=int, default=16000, help="requests per run (32 clients)")
    args = ap.parse_args(argv)

    manifest, _ = load_version(args.registry, args.model)
    print(f"{args.model} {manifest.version}, {args.door} door, 32 clients, {args.requests:,} requests per run, "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}, load average {os.getloadavg()[0]:.1f}")
    print("| run | items/s | p50 ms | p99 ms | errors | server CPU ms/item | mean batch |\n|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="repeat-load-") as tmp, \
            one_model_door(args.registry, args.model, args.door, Path(tmp), warmup=1000) as (server, req, body_file):
        for run in range(1, args.runs + 1):
            before, cpu0 = counters(server.url), server.cpu_seconds()
            load = req.run(req.url, body_file, args.requests, 32, 240, req.headers)
            after, cpu1 = counters(server.url), server.cpu_seconds()
            items = after[COUNTERS[0]] - before[COUNTERS[0]]
            batches = after[COUNTERS[1]] - before[COUNTERS[1]]
            print(f"| {run} | {load.items_s:,.0f} | {load.p50_ms:.1f} | {load.p99_ms:.1f} | {load.errors} | "
                  f"{1000 * (cpu1 - cpu0) / max(load.ok, 1):.3f} | {items / max(batches, 1):.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
