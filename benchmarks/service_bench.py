"""Service vs raw onnxruntime, for the given models (default sentiment and fashion).

Raw: the model's own graph in-process through its runtime, with the service's thread
count; "raw" latency is onnxruntime's ``session.run`` time (``last_timings["inference"]``),
"in-process" adds the runtime's pre/post-processing. Service: the real ``bentoml serve``
over HTTP, driven by ``wrk`` (default; benchmarks/wrk_fixed_count.lua stops it after a
fixed number of responses) or ``hey``, with one item per request: 1 client (p50, p99) and
32 clients (items/s, p50, p99, errors), fixed request counts, bounded time. The load
generator runs on the same cores as the service, so its own CPU per request is reported:
hey spends several times more than wrk, CPU the service then lacks.

    .venv/bin/python benchmarks/service_bench.py [--registry exported] [--models sentiment,fashion]

Prints a table and replaces its own section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modelkit.onnx_session import SessionSettings  # noqa: E402
from modelkit.readiness import wait_until_ready  # noqa: E402
from modelkit.registry import load_version  # noqa: E402
from modelkit.runtimes import create_runtime  # noqa: E402

SECTION_START = "<!-- service_bench:start -->"
SECTION_END = "<!-- service_bench:end -->"
ENDPOINTS = {"text-classification": "/classify", "multi-label-classification": "/classify",
             "image-classification": "/classify_image"}


@dataclass
class Raw:
    b1_p50_ms: float
    b1_p99_ms: float
    b32_items_s: float
    inproc_b1_p50_ms: float
    inproc_b32_items_s: float
    cpu_ms_per_item: float  # process CPU time (all threads) per item in the batch-32 loop


@dataclass
class Load:
    clients: int
    requests: int
    ok: int
    errors: int
    items_s: float
    p50_ms: float
    p99_ms: float
    server_cpu_ms_per_item: float = float("nan")  # CPU of the whole server process tree per answered item
    client_cpu_ms_per_request: float = float("nan")  # CPU of the load generator per request


def sample_item(task: str) -> tuple[object, dict]:
    """One real input and its request body."""
    if task == "image-classification":
        from modelkit.image import encode_png

        img = _fashion_test_image()
        png = encode_png(img)
        return png, {"images": [base64.b64encode(png).decode()]}
    text = "Just got back from the beach, what a lovely day with the family"
    return text, {"texts": [text]}


def _fashion_test_image() -> np.ndarray:
    import gzip

    with gzip.open("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz", "rb") as f:
        data = f.read()
    return np.frombuffer(data, dtype=np.uint8, offset=16)[: 28 * 28].reshape(28, 28).copy()


def measure_raw(registry: Path, name: str, settings: SessionSettings, item, n1: int, n32: int) -> Raw:
    manifest, vdir = load_version(registry, name)
    runtime = create_runtime(manifest, vdir, settings)
    runtime.load()
    runtime.warmup()
    one = [runtime.validate(item)]
    batch = one * 32
    inf1, full1 = [], []
    for _ in range(n1):
        t0 = time.perf_counter()
        runtime.predict(one)
        full1.append(time.perf_counter() - t0)
        inf1.append(runtime.last_timings["inference"])
    inf32, full32 = [], []
    cpu0 = time.process_time()
    for _ in range(n32):
        t0 = time.perf_counter()
        runtime.predict(batch)
        full32.append(time.perf_counter() - t0)
        inf32.append(runtime.last_timings["inference"])
    cpu_per_item = (time.process_time() - cpu0) / (32 * n32)
    return Raw(
        cpu_ms_per_item=1000 * cpu_per_item,
        b1_p50_ms=1000 * float(np.median(inf1)),
        b1_p99_ms=1000 * float(np.percentile(inf1, 99)),
        b32_items_s=32 / float(np.median(inf32)),
        inproc_b1_p50_ms=1000 * float(np.median(full1)),
        inproc_b32_items_s=32 / float(np.median(full32)),
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``bentoml serve`` in its own process group, stopped on exit."""

    def __init__(self, registry: Path, env: dict[str, str], workdir: Path, target: str = "service.app:ModelService"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"serve-{self.port}.log"
        bentoml = Path(sys.executable).with_name("bentoml")
        full_env = {**os.environ, "MODEL_REGISTRY": str(registry), "BENTOML_HOME": str(workdir / "home"),
                    "BENTOML_DO_NOT_TRACK": "True", **env}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(bentoml), "serve", target, "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 120) -> None:
        wait_until_ready(f"{self.url}/readyz", self.proc, timeout=timeout, name="bentoml serve",
                         log=lambda: self.log.read_text(errors="replace"))

    def cpu_seconds(self) -> float:
        """User + system CPU of the server and all its processes (arbiter, workers) so far."""
        import psutil

        root = psutil.Process(self.proc.pid)
        total = 0.0
        for p in [root, *root.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def hey(url: str, body_file: Path, n: int, c: int, timeout_s: float) -> Load:
    """Run hey with CSV output; latency percentiles and items/s from its per-request rows.

    hey sends n // c requests per client; a request missing from its rows (connection error,
    timeout) counts as an error, like every non-200 answer.
    """
    n = (n // c) * c
    cmd = ["hey", "-n", str(n), "-c", str(c), "-t", "20", "-m", "POST", "-T", "application/json",
           "-D", str(body_file), "-o", "csv", url]
    cpu0 = _children_cpu()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s).stdout
    client_cpu = _children_cpu() - cpu0
    rows = list(csv.DictReader(io.StringIO(out)))
    lat = np.array([float(r["response-time"]) for r in rows])
    status = [r["status-code"] for r in rows]
    ok = sum(s == "200" for s in status)  # errors: n - ok (non-200 rows and missing rows)
    ends = np.array([float(r["offset"]) + float(r["response-time"]) for r in rows])
    starts = np.array([float(r["offset"]) for r in rows])
    elapsed = float(ends.max() - starts.min()) if rows else float("nan")
    return Load(clients=c, requests=n, ok=ok, errors=n - ok, items_s=ok / elapsed if elapsed else 0.0,
                p50_ms=1000 * float(np.median(lat)) if rows else float("nan"),
                p99_ms=1000 * float(np.percentile(lat, 99)) if rows else float("nan"),
                client_cpu_ms_per_request=1000 * client_cpu / max(len(rows), 1))


WRK_SCRIPT = ROOT / "benchmarks" / "wrk_fixed_count.lua"


def wrk(url: str, body_file: Path, n: int, c: int, timeout_s: float) -> Load:
    """Run wrk (one thread, ``c`` connections) until ``n`` responses; see wrk_fixed_count.lua.

    Errors are non-200 answers plus socket errors, and every missing response if wrk ran
    out of time before ``n``. Latency percentiles come from wrk's own histogram.
    """
    env = {**os.environ, "BODY": str(body_file), "N": str(n)}
    cmd = ["wrk", "-t1", f"-c{c}", f"-d{int(timeout_s)}s", "--timeout", "20s", "--latency", "-s", str(WRK_SCRIPT), url]
    cpu0 = _children_cpu()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s + 30, env=env).stdout
    client_cpu = _children_cpu() - cpu0
    line = next((ln for ln in out.splitlines() if ln.startswith("FIXED_COUNT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no FIXED_COUNT line:\n{out[-2000:]}")
    r = json.loads(line.split(" ", 1)[1])
    answered = r["responses"]
    ok = answered - r["non_200"]
    errors = r["non_200"] + r["socket_errors"] + (n - answered)
    return Load(clients=c, requests=n, ok=ok, errors=errors,
                items_s=ok / r["seconds"] if r["complete"] and r["seconds"] > 0 else 0.0,
                p50_ms=r["p50_us"] / 1000, p99_ms=r["p99_us"] / 1000,
                client_cpu_ms_per_request=1000 * client_cpu / max(answered, 1))


LOAD_GENERATORS = {"wrk": wrk, "hey": hey}


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def versions() -> str:
    names = ("bentoml", "onnxruntime", "fastapi", "uvicorn", "uvloop", "httptools", "pydantic")
    parts = [f"python {platform.python_version()}"]
    for n in names:
        try:
            parts.append(f"{n} {metadata.version(n)}")
        except metadata.PackageNotFoundError:
            pass
    for tool in ("wrk", "hey"):
        parts.append(f"{tool} ({shutil.which(tool)})")
    return ", ".join(parts)


def write_results(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    block = f"{SECTION_START}\n{section.rstrip()}\n{SECTION_END}"
    if SECTION_START in text and SECTION_END in text:
        before, rest = text.split(SECTION_START, 1)
        _, after = rest.split(SECTION_END, 1)
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--registry", type=Path, default=Path(os.environ.get("MODEL_REGISTRY", ROOT / "exported")))
    ap.add_argument("--models", default="sentiment,fashion")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: cores // workers)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--provider", default="cpu", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=2.0)
    ap.add_argument("--requests-1", type=int, default=1000, help="requests for the 1-client run")
    ap.add_argument("--requests-32", type=int, default=4000, help="requests for the 32-client run")
    ap.add_argument("--raw-iters", type=int, default=300)
    ap.add_argument("--timeout", type=float, default=240, help="seconds allowed per load run")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    ap.add_argument("--multi-items", type=int, default=8, help="items per request in the extra 32-client run (1: skip)")
    ap.add_argument("--client", default="wrk", choices=sorted(LOAD_GENERATORS), help="load generator")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--note", default="", help="a line about the models (how they were made) for the header")
    ap.add_argument("--baseline", action="store_true",
                    help="also measure BentoML's adaptive batching (benchmarks/service_adaptive_baseline.py)")
    args = ap.parse_args(argv)

    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers - 1)  # the service's default
    settings = SessionSettings(provider=args.provider, variant="fp32", intra_op_threads=threads)
    env = {"SERVICE_THREADS": str(threads), "SERVICE_WORKERS": str(args.workers), "SERVICE_PROVIDER": args.provider,
           "SERVICE_VARIANT": "fp32", "SERVICE_DEFAULT_BATCH__MAX_BATCH_SIZE": str(args.max_batch),
           "SERVICE_DEFAULT_BATCH__MAX_WAIT_MS": str(args.max_wait_ms),
           "SERVICE_MODELS": json.dumps(args.models.split(","))}
    rows, baseline_rows, multi_rows = [], [], []
    with tempfile.TemporaryDirectory(prefix="service-bench-") as tmp:
        tmpdir = Path(tmp)
        raws, raws_all, items, tasks, model_versions = {}, {}, {}, {}, {}
        load_before = os.getloadavg()
        for name in args.models.split(","):
            manifest, _ = load_version(args.registry, name)
            tasks[name] = manifest.task
            model_versions[name] = manifest.version
            item, body = sample_item(manifest.task)
            items[name] = body | {"model": name}
            print(f"[{name}] raw onnxruntime, {threads} thread(s) ...", flush=True)
            raws[name] = measure_raw(args.registry, name, settings, item, args.raw_iters, max(30, args.raw_iters // 4))
            cores = os.cpu_count() or 1
            if threads != cores:  # what a caller bypassing the service could get with every core
                all_cores = settings.model_copy(update={"intra_op_threads": cores})
                raws_all[name] = measure_raw(args.registry, name, all_cores, item, args.raw_iters,
                                             max(30, args.raw_iters // 4))
        server = Server(args.registry, env, tmpdir)
        try:
            server.wait_ready()
            provider = json.loads(_get(f"{server.url}/models"))["models"][0]["provider"]
            for name in args.models.split(","):
                print(f"[{name}] service: warm-up, 1 client, 32 clients ...", flush=True)
                url = server.url + ENDPOINTS[tasks[name]]
                one, many = load_runs(server, url, items[name], tmpdir / f"{name}.json", args)
                rows.append((name, raws[name], one, many))
                if args.multi_items > 1:
                    key = "images" if "images" in items[name] else "texts"
                    body = items[name] | {key: items[name][key] * args.multi_items}
                    body_file = tmpdir / f"{name}-multi.json"
                    body_file.write_text(json.dumps(body))
                    n = max(32, args.requests_32 // args.multi_items)
                    load = with_server_cpu(server, LOAD_GENERATORS[args.client], url, body_file, n, args.timeout,
                                           items_per_request=args.multi_items)
                    multi_rows.append((name, raws[name], load))
        finally:
            server.stop()
        if args.baseline:
            base_env = env | {"BASELINE_MODELS": args.models}
            server = Server(args.registry, base_env, tmpdir, target="benchmarks.service_adaptive_baseline:AdaptiveBaseline")
            try:
                server.wait_ready()
                for name in args.models.split(","):
                    print(f"[{name}] BentoML adaptive batching baseline ...", flush=True)
                    body = {k: v for k, v in items[name].items() if k != "model"}
                    url = server.url + ENDPOINTS[tasks[name]]
                    one, many = load_runs(server, url, body, tmpdir / f"{name}-base.json", args)
                    baseline_rows.append((name, raws[name], one, many))
            finally:
                server.stop()

    load_after = os.getloadavg()
    table = render(rows, provider)
    if multi_rows:
        table += (f"\n32 clients sending {args.multi_items} items per request "
                  f"({max(32, args.requests_32 // args.multi_items)} requests):\n\n"
                  "| model | items/s | vs raw b32 | p50 ms | p99 ms | errors | service CPU ms/item |\n"
                  "|---|---:|---:|---:|---:|---:|---:|\n")
        for name, raw, load in multi_rows:
            table += (f"| {name} | {load.items_s:,.0f} | {load.items_s / raw.b32_items_s:.2f}x | {load.p50_ms:.1f} | "
                      f"{load.p99_ms:.1f} | {load.errors} | {load.server_cpu_ms_per_item:.2f} |\n")
    for name, raw in raws_all.items():
        table += (f"\nRaw {name} with all {os.cpu_count()} cores as intra-op threads: batch-1 p50 "
                  f"{raw.b1_p50_ms:.2f} ms, batch-32 {raw.b32_items_s:,.0f} items/s.\n")
    if baseline_rows:
        table += ("\nBefore/after: the same load against BentoML's adaptive batching "
                  "(`@bentoml.api(batchable=True)`, benchmarks/service_adaptive_baseline.py) instead of "
                  "service/batcher.py:\n\n" + render(baseline_rows, provider, label="adaptive batching: "))
    header = (
        "## Service vs raw onnxruntime (benchmarks/service_bench.py)\n\n"
        f"- machine: {machine()}\n- versions: {versions()}\n"
        f"- settings: provider {provider}, fp32, {args.workers} worker(s), {threads} intra-op thread(s) per session "
        f"(raw runs use the same), max batch {args.max_batch}, max wait {args.max_wait_ms} ms; "
        f"load generator {args.client} with one item per request; {args.requests_1} requests at 1 client, "
        f"{args.requests_32} at 32 clients\n"
        f"- models: {', '.join(f'{n} {v}' for n, v in model_versions.items())} (registry {args.registry})"
        f"{'; ' + args.note if args.note else ''}\n"
        f"- measured {time.strftime('%Y-%m-%d %H:%M %Z')}; the load generator shares the machine's cores "
        f"with the service; load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after "
        "(other jobs running on the same cores make every number noisier)\n"
        "- CPU ms/item: CPU time per item of the raw batch-32 loop (all its threads) and of the whole server "
        "process tree during the 32-client run (client excluded); unlike wall-clock rates it barely depends on "
        "what else runs on the machine; client CPU ms/request: the load generator's own CPU, taken from the "
        "same two cores\n\n"
    )
    print()
    print(header + table)
    if not args.no_write:
        write_results(args.results, header + table)
        print(f"wrote {args.results}")
    return 0


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def load_runs(server: "Server", url: str, body: dict, body_file: Path, args) -> tuple[Load, Load]:
    """Warm-up, then the 1-client and 32-client runs (the latter with the server's CPU per item)."""
    body_file.write_text(json.dumps(body))
    run = LOAD_GENERATORS[args.client]
    run(url, body_file, 200, 8, args.timeout)
    one = run(url, body_file, args.requests_1, 1, args.timeout)
    many = with_server_cpu(server, run, url, body_file, args.requests_32, args.timeout)
    return one, many


def with_server_cpu(server: "Server", run, url: str, body_file: Path, n: int, timeout_s: float,
                    items_per_request: int = 1) -> Load:
    """A 32-client run with the server's CPU per item; items/s counts every item of each request."""
    cpu0 = server.cpu_seconds()
    load = run(url, body_file, n, 32, timeout_s)
    load.server_cpu_ms_per_item = 1000 * (server.cpu_seconds() - cpu0) / max(load.ok * items_per_request, 1)
    load.items_s *= items_per_request
    return load


def render(rows, provider: str, label: str = "") -> str:
    lines = [
        "| model | raw b1 p50 ms | raw b32 items/s | in-process b1 p50 ms | in-process b32 items/s "
        "| 1 client p50 ms | 1 client p99 ms | 32 clients items/s | 32 clients p50 ms | 32 clients p99 ms "
        "| errors | raw CPU ms/item (b32) | service CPU ms/item (32c) | client CPU ms/request (32c) "
        "| 32c >= 0.5x raw b32 | 1c p50 <= raw b1 + 3 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for name, raw, one, many in rows:
        throughput_ok = many.items_s >= 0.5 * raw.b32_items_s and many.errors == 0 and one.errors == 0
        latency_ok = one.p50_ms <= raw.b1_p50_ms + 3.0
        lines.append(
            f"| {label}{name} | {raw.b1_p50_ms:.2f} | {raw.b32_items_s:,.0f} | {raw.inproc_b1_p50_ms:.2f} | "
            f"{raw.inproc_b32_items_s:,.0f} | {one.p50_ms:.2f} | {one.p99_ms:.2f} | {many.items_s:,.0f} | "
            f"{many.p50_ms:.1f} | {many.p99_ms:.1f} | {one.errors + many.errors} | "
            f"{raw.cpu_ms_per_item:.2f} | {many.server_cpu_ms_per_item:.2f} | {many.client_cpu_ms_per_request:.3f} | "
            f"{'PASS' if throughput_ok else 'FAIL'} ({many.items_s / raw.b32_items_s:.2f}x) | "
            f"{'PASS' if latency_ok else 'FAIL'} (+{one.p50_ms - raw.b1_p50_ms:.2f} ms) |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
