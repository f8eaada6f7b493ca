"""Where one request's CPU goes: the serving worker's threads under a wrk run, and its event loop by layer.

The real ``bentoml serve`` (1 worker) serves one model; ``wrk`` (``h2load`` for gRPC) drives one door
with 32 clients for a fixed time. Measured over the run: the CPU of each of the worker's threads
(the event-loop thread that runs HTTP, the doors and the batcher; the model thread, mostly inside
onnxruntime with the GIL released; the rest) per answered request; and ``py-spy record --gil`` samples
(only a thread holding the GIL: Python code and the C code it calls, not waits) of the event-loop
thread, each put in the layer of its innermost frame that belongs to a known layer. A layer's share
of those samples, times the event-loop thread's CPU per request, is what it costs one request.

    .venv/bin/python benchmarks/request_profile.py --registry exported --model sentiment [--door json]

Needs py-spy (dev extra). Prints a table and replaces its own section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from service_bench import Server, machine, one_model_door, versions, write_results  # noqa: E402

from modelkit.registry import load_version  # noqa: E402

# (layer, substrings of a frame's "function (file)" text), innermost match wins; first rule first
LAYERS = [
    ("model: onnxruntime Session.run", ("onnxruntime_inference_collection",)),
    ("runtime pre/post-processing (tokenizer, softmax, ranking)", ("modelkit/", "tokenizers", "numpy/")),
    ("metrics (buffer, prometheus_client)", ("monitoring/metrics", "prometheus_client", "service/telemetry")),
    ("batcher (queue, model thread hand-offs)", ("service/batcher", "concurrent/futures")),
    ("dataplane, task spec, worker, lifecycle", ("service/dataplane", "service/tasks/", "service/worker",
                                                 "service/lifecycle", "service/models")),
    ("door: JSON API / OIP (parse, encode)", ("service/doors/", "pydantic", "json/", "service/schemas")),
    ("front (routing, checks, errors)", ("service/front", "service/guard", "service/auth", "service/limits",
                                         "starlette/")),
    ("BentoML and OpenTelemetry middleware", ("bentoml/", "_bentoml_impl", "_bentoml_sdk", "opentelemetry")),
    ("uvicorn HTTP (httptools)", ("uvicorn/", "httptools")),
    ("grpc.aio", ("grpc/",)),
    ("event loop (asyncio, uvloop)", ("asyncio/", "uvloop", "runners.py")),
]


def layer_of(stack: list[str]) -> str:
    for frame in reversed(stack):  # innermost first
        for name, marks in LAYERS:
            if any(m in frame for m in marks):
                return name
    return "other"


def profile(pid: int, seconds: float, out: Path) -> Counter:
    """Layer -> GIL-holding samples of the event-loop (main) thread."""
    beside = Path(sys.executable).with_name("py-spy")
    py_spy = str(beside) if beside.exists() else shutil.which("py-spy") or "py-spy"  # pip --target: on PATH
    subprocess.run([py_spy, "record", "-p", str(pid), "-d", str(int(seconds)),
                    "-r", "250", "-f", "raw", "-o", str(out), "--nonblocking", "--gil"],
                   check=True, capture_output=True, timeout=seconds + 60)
    layers: Counter = Counter()
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        if frames and frames[0].startswith("Thread._bootstrap"):  # a thread started by threading: not the loop
            continue
        layers[layer_of(frames)] += int(n)
    return layers


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far of the worker's event-loop (main) thread and of all its other threads."""
    import psutil

    out = {"event loop": 0.0, "other threads (model thread, metrics flush, gRPC poller)": 0.0}
    for t in psutil.Process(pid).threads():
        key = "event loop" if t.id == pid else "other threads (model thread, metrics flush, gRPC poller)"
        out[key] += t.user_time + t.system_time
    return out


def worker_pid(server: Server) -> int:
    import psutil

    for child in psutil.Process(server.proc.pid).children(recursive=True):
        if "_bentoml_impl.worker" in " ".join(child.cmdline()):
            return child.pid
    raise RuntimeError("no BentoML worker process found")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--registry", type=Path, default=Path(os.environ.get("MODEL_REGISTRY", ROOT / "exported")))
    ap.add_argument("--model", default="sentiment")
    ap.add_argument("--door", default="json", choices=["json", "oip-rest", "oip-grpc"])
    ap.add_argument("--seconds", type=float, default=15.0, help="profiled seconds")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)

    manifest, _ = load_version(args.registry, args.model)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="request-profile-") as tmp, \
            one_model_door(args.registry, args.model, args.door, Path(tmp)) as (server, req, body_file):
        pid = worker_pid(server)
        found: dict = {}
        sampler = threading.Thread(target=lambda: found.update(
            layers=profile(pid, args.seconds, Path(tmp) / "profile.raw")))
        threads0 = thread_cpu(pid)
        sampler.start()
        if req.door == "oip-grpc":  # h2load: for a duration
            load = req.run(req.url, body_file, 0, 32, args.seconds + 2, req.headers, duration_s=args.seconds + 2)
        else:  # wrk runs until its time is up
            load = req.run(req.url, body_file, 10**7, 32, args.seconds + 2, req.headers)
        sampler.join()
        threads = {k: v - threads0[k] for k, v in thread_cpu(pid).items()}
    load_after = os.getloadavg()
    layers: Counter = found["layers"]
    total = sum(layers.values())
    answered = load.ok if load.ok else 1
    per_thread = {k: 1000 * v / answered for k, v in threads.items()}
    loop_ms = per_thread["event loop"]
    table = "| where | share of the event loop's samples | CPU ms per request |\n|---|---:|---:|\n"
    for name, n in layers.most_common():
        table += f"| event loop: {name} | {n / total:.1%} | {loop_ms * n / total:.3f} |\n"
    table += f"| **event-loop thread** | 100% | **{loop_ms:.3f}** |\n"
    for name, ms in per_thread.items():
        if name != "event loop":
            table += f"| **{name}** | | **{ms:.3f}** |\n"
    table += f"| **the worker, every thread** | | **{sum(per_thread.values()):.3f}** |\n"
    header = (
        f"## One request's CPU by layer (benchmarks/request_profile.py, {args.door} door)\n\n"
        f"- machine: {machine()}\n- versions: {versions()}\n"
        f"- settings: 1 worker, {args.model} {manifest.version} (registry {args.registry}), 32 clients "
        f"({'wrk' if args.door != 'oip-grpc' else 'h2load'}), one item per request; py-spy --gil, 250 samples/s over "
        f"{args.seconds:.0f} s; {answered:,} answers; thread CPU from /proc over the same run\n"
        f"- measured {time.strftime('%Y-%m-%d %H:%M %Z')}; load average (1 min) {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after\n\n"
    )
    print()
    print(header + table)
    if not args.no_write:
        write_results(args.results, header + table, f"<!-- request_profile:{args.door}:start -->",
                      f"<!-- request_profile:{args.door}:end -->")
    return 0


if __name__ == "__main__":
    sys.exit(main())
