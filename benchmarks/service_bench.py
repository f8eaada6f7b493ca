"""Service vs raw onnxruntime, for the given models (default sentiment and fashion), door by door.

Raw: the model's own graph in-process through its runtime, with the service's thread
count; "raw" latency is onnxruntime's ``session.run`` time (``last_timings["inference"]``),
"in-process" adds the runtime's pre/post-processing. Service: the real ``bentoml serve``
driven with one item per request: 1 client (p50, p99) and 32 clients (items/s, p50, p99,
errors), fixed request counts, bounded time, through each door:

- ``json``: the task JSON API over HTTP, driven by ``wrk`` (default; benchmarks/wrk_fixed_count.lua
  stops it after a fixed number of responses) or ``hey``;
- ``oip-rest``: the Open Inference Protocol over HTTP, by ``wrk`` sending the exact bytes
  ``tritonclient.http`` sends by default (binary tensor data extension);
- ``oip-grpc``: the Open Inference Protocol over gRPC, by ``h2load`` (nghttp2's HTTP/2 load
  generator, in C) sending the exact ``ModelInferRequest`` ``tritonclient.grpc`` sends; gRPC
  answers errors inside HTTP 200, so errors are also counted from the server's own
  ``modelserve_requests_total`` (every door's non-200 answers are).

The load generator runs on the same cores as the service, so its own CPU per request is reported:
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
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
from service.settings import ServiceSettings  # noqa: E402

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
        self.port, grpc_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_address = f"127.0.0.1:{grpc_port}"
        self.log = workdir / f"serve-{self.port}.log"
        script = Path(sys.executable).with_name("bentoml")
        # where packages were installed beside the interpreter (pip --target, as on a lent GPU machine)
        # there is no console script: run the module instead
        bentoml = [str(script)] if script.exists() else [sys.executable, "-m", "bentoml"]
        full_env = {**os.environ, "MODEL_REGISTRY": str(registry), "BENTOML_HOME": str(workdir / "home"),
                    "BENTOML_DO_NOT_TRACK": "True", "SERVICE_GRPC_HOST": "127.0.0.1",
                    "SERVICE_GRPC_PORT": str(grpc_port), **env}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [*bentoml, "serve", target, "--host", "127.0.0.1", "--port", str(self.port)],
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

    def refused(self) -> float:
        """Non-200 answers the server has counted so far, every door (modelserve_requests_total)."""
        total = 0.0
        for line in _get(f"{self.url}/metrics").splitlines():
            if line.startswith("modelserve_requests_total{") and 'status="200"' not in line:
                total += float(line.rsplit(" ", 1)[1])
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


def hey(url: str, body_file: Path, n: int, c: int, timeout_s: float, headers: dict[str, str] | None = None) -> Load:
    """Run hey with CSV output; latency percentiles and items/s from its per-request rows.

    hey sends n // c requests per client; a request missing from its rows (connection error,
    timeout) counts as an error, like every non-200 answer.
    """
    n = (n // c) * c
    cmd = ["hey", "-n", str(n), "-c", str(c), "-t", "20", "-m", "POST", "-T", "application/json",
           "-D", str(body_file), "-o", "csv", *(a for k, v in (headers or {}).items() for a in ("-H", f"{k}: {v}")),
           url]
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


def wrk(url: str, body_file: Path, n: int, c: int, timeout_s: float, headers: dict[str, str] | None = None) -> Load:
    """Run wrk (one thread, ``c`` connections) until ``n`` responses; see wrk_fixed_count.lua.

    Errors are non-200 answers plus socket errors, and every missing response if wrk ran
    out of time before ``n``. Latency percentiles come from wrk's own histogram.
    """
    env = {**os.environ, "BODY": str(body_file), "N": str(n),
           "HEADERS": "\n".join(f"{k}: {v}" for k, v in (headers or {}).items())}
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


def h2load(url: str, body_file: Path, n: int, c: int, timeout_s: float, headers: dict[str, str] | None = None,
           duration_s: float | None = None) -> Load:
    """Run h2load (one thread, ``c`` HTTP/2 connections, one stream each) for ``n`` requests, or for
    ``duration_s`` seconds when given.

    Latency percentiles and items/s come from its per-request log (start, status, duration);
    a missing or non-200 row is an error. gRPC errors travel in trailers of HTTP 200
    answers: the caller adds the server's own count of them.
    """
    log = body_file.with_suffix(".h2load.tsv")
    log.unlink(missing_ok=True)  # h2load appends to its log: rows of an earlier run would count in this one
    count = ["-D", f"{duration_s:g}"] if duration_s else ["-n", str(n)]
    cmd = ["h2load", *count, "-c", str(c), "-m", "1", "-t", "1", "-d", str(body_file),
           "--log-file", str(log), *(a for k, v in (headers or {}).items() for a in ("-H", f"{k}: {v}")), url]
    cpu0 = _children_cpu()
    subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s + 30)
    client_cpu = _children_cpu() - cpu0
    rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    starts = np.array([float(r[0]) for r in rows]) / 1e6
    lat = np.array([float(r[2]) for r in rows]) / 1e6
    ok = sum(r[1] == "200" for r in rows)
    elapsed = float((starts + lat).max() - starts.min()) if rows else 0.0
    sent = len(rows) if duration_s else n
    return Load(clients=c, requests=sent, ok=ok, errors=sent - ok, items_s=ok / elapsed if elapsed else 0.0,
                p50_ms=1000 * float(np.median(lat)) if rows else float("nan"),
                p99_ms=1000 * float(np.percentile(lat, 99)) if rows else float("nan"),
                client_cpu_ms_per_request=1000 * client_cpu / max(len(rows), 1))


LOAD_GENERATORS = {"wrk": wrk, "hey": hey}
DOORS = ("json", "oip-rest", "oip-grpc")


@dataclass
class DoorRequest:
    """One request as a door's wire bytes, and how to drive it."""

    door: str
    url: str
    body: bytes
    headers: dict[str, str]
    run: object  # the load generator function


def oip_input(module, task: str, item):
    """One item as the OIP input tensor a tritonclient user builds (``module``: tritonclient.http or .grpc)."""
    if task == "image-classification":
        tensor = module.InferInput("image_bytes", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([item], dtype=object))
    else:
        tensor = module.InferInput("text", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([item.encode("utf-8")], dtype=object))
    return tensor


def oip_rest_body(task: str, item) -> tuple[bytes, dict[str, str]]:
    """The body and headers ``tritonclient.http`` sends by default for one item (binary tensor data)."""
    import tritonclient.http as thttp
    from tritonclient.http._utils import _get_inference_request

    body, json_size = _get_inference_request([oip_input(thttp, task, item)], "", None, 0, False, False, 0, None, None)
    return body, ({"Inference-Header-Content-Length": str(json_size)} if json_size is not None else {})


def door_request(door: str, server: "Server", name: str, task: str, item, json_body: dict, client: str) -> DoorRequest:
    """The bytes a real client of ``door`` sends for one item (tritonclient's own encoders for the OIP doors)."""
    if door == "json":
        return DoorRequest(door, server.url + ENDPOINTS[task], json.dumps(json_body).encode(), {},
                           LOAD_GENERATORS[client])
    if door == "oip-rest":
        body, headers = oip_rest_body(task, item)
        return DoorRequest(door, f"{server.url}/v2/models/{name}/infer", body, headers, wrk)
    import tritonclient.grpc as tgrpc
    from tritonclient.grpc._utils import _get_inference_request as grpc_request

    message = grpc_request(name, [oip_input(tgrpc, task, item)], "", "", None, 0, False, False, 0, None,
                           None).SerializeToString()
    framed = b"\x00" + len(message).to_bytes(4, "big") + message  # gRPC length-prefixed message
    return DoorRequest(door, f"http://{server.grpc_address}/inference.GRPCInferenceService/ModelInfer", framed,
                       {"content-type": "application/grpc", "te": "trailers"}, h2load)


@contextmanager
def one_model_door(registry: Path, name: str, door: str, workdir: Path, warmup: int = 500
                   ) -> Iterator[tuple[Server, DoorRequest, Path]]:
    """``bentoml serve`` with only ``name``, and a warmed-up request of ``door`` for it: (server, request,
    body file); the server is stopped on exit."""
    manifest, _ = load_version(registry, name)
    item, body = sample_item(manifest.task)
    server = Server(registry, {"SERVICE_MODELS": json.dumps([name])}, workdir)
    try:
        server.wait_ready()
        req = door_request(door, server, name, manifest.task, item, body | {"model": name}, "wrk")
        body_file = workdir / "body"
        body_file.write_bytes(req.body)
        req.run(req.url, body_file, warmup, 8, 60, req.headers)
        yield server, req, body_file
    finally:
        server.stop()


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
    import onnxruntime

    names = ("bentoml", "fastapi", "uvicorn", "uvloop", "httptools", "pydantic")
    # the imported module, not the dist metadata: onnxruntime-gpu installs under its own name
    build = "GPU build" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "CPU build"
    parts = [f"python {platform.python_version()}", f"onnxruntime {onnxruntime.__version__} ({build})"]
    for n in names:
        try:
            parts.append(f"{n} {metadata.version(n)}")
        except metadata.PackageNotFoundError:
            pass
    for tool in ("wrk", "hey"):
        parts.append(f"{tool} ({shutil.which(tool)})")
    return ", ".join(parts)


def write_results(path: Path, section: str, start: str = SECTION_START, end: str = SECTION_END) -> None:
    """Replace the section between the ``start`` and ``end`` markers of ``path`` (append it when missing)."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    block = f"{start}\n{section.rstrip()}\n{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
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
    ap.add_argument("--client", default="wrk", choices=sorted(LOAD_GENERATORS), help="load generator (JSON door)")
    ap.add_argument("--doors", default=",".join(DOORS), help=f"doors to drive, json first ({', '.join(DOORS)})")
    ap.add_argument("--rounds", type=int, default=1,
                    help="load runs per door, the doors interleaved in each round; tables show the median round")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--note", default="", help="a line about the models (how they were made) for the header")
    ap.add_argument("--baseline", action="store_true",
                    help="also measure BentoML's adaptive batching (benchmarks/service_adaptive_baseline.py)")
    args = ap.parse_args(argv)

    threads = args.threads or ServiceSettings(workers=args.workers, threads=0).intra_op_threads()  # its default
    settings = SessionSettings(provider=args.provider, variant="fp32", intra_op_threads=threads)
    env = {"SERVICE_THREADS": str(threads), "SERVICE_WORKERS": str(args.workers), "SERVICE_PROVIDER": args.provider,
           "SERVICE_VARIANT": "fp32", "SERVICE_DEFAULT_BATCH__MAX_BATCH_SIZE": str(args.max_batch),
           "SERVICE_DEFAULT_BATCH__MAX_WAIT_MS": str(args.max_wait_ms),
           "SERVICE_MODELS": json.dumps(args.models.split(","))}
    if args.rounds < 1:
        ap.error(f"--rounds must be at least 1 (got {args.rounds})")
    doors = [d for d in args.doors.split(",") if d]
    unknown = set(doors) - set(DOORS)
    if unknown or "json" not in doors:
        ap.error(f"--doors: choose from {', '.join(DOORS)}, json included (got {args.doors})")
    rows, baseline_rows, multi_rows, door_rows = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="service-bench-") as tmp:
        tmpdir = Path(tmp)
        raws, raws_all, items, raw_items, tasks, model_versions = {}, {}, {}, {}, {}, {}
        load_before = os.getloadavg()
        for name in args.models.split(","):
            manifest, _ = load_version(args.registry, name)
            tasks[name] = manifest.task
            model_versions[name] = manifest.version
            item, body = sample_item(manifest.task)
            items[name] = body | {"model": name}
            raw_items[name] = item
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
                reqs = {door: door_request(door, server, name, tasks[name], raw_items[name], items[name], args.client)
                        for door in doors}
                runs: dict[str, list[tuple[Load, Load]]] = {door: [] for door in doors}
                for r in range(args.rounds):  # doors interleaved: the machine's drift lands on all of them
                    for door in doors:
                        print(f"[{name}] round {r + 1}/{args.rounds}, {door} door: warm-up, 1 client, 32 clients ...",
                              flush=True)
                        runs[door].append(load_runs(server, reqs[door], tmpdir / f"{name}-{door}.body", args))
                for door in doors:
                    one = median_run([o for o, _ in runs[door]], key=lambda load: load.p50_ms)
                    many = median_run([m for _, m in runs[door]], key=lambda load: load.items_s)
                    door_rows.append((name, door, raws[name], one, many, [m.items_s for _, m in runs[door]]))
                    if door == "json":
                        rows.append((name, raws[name], one, many))
                if args.multi_items > 1:
                    key = "images" if "images" in items[name] else "texts"
                    body = items[name] | {key: items[name][key] * args.multi_items}
                    req = door_request("json", server, name, tasks[name], raw_items[name], body, args.client)
                    body_file = tmpdir / f"{name}-multi.json"
                    body_file.write_bytes(req.body)
                    n = max(32, args.requests_32 // args.multi_items)
                    load = with_server_cpu(server, req, body_file, n, args.timeout, items_per_request=args.multi_items)
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
                    req = door_request("json", server, name, tasks[name], raw_items[name], body, args.client)
                    one, many = load_runs(server, req, tmpdir / f"{name}-base.json", args)
                    baseline_rows.append((name, raws[name], one, many))
            finally:
                server.stop()

    load_after = os.getloadavg()
    table = render(rows, provider)
    if len(doors) > 1:
        table += ("\nThe same models through every door (JSON API by " + args.client + ", OIP REST by wrk with "
                  "tritonclient.http's bytes, OIP gRPC by h2load with tritonclient.grpc's message); one item per "
                  "request:\n\n" + render_doors(door_rows))
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
        f"{args.requests_32} at 32 clients; {args.rounds} round(s) per door, the doors interleaved within each, "
        "each cell from the median round (32 clients: by items/s, its p50, p99 and CPU from that same run; "
        "1 client: by p50)\n"
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


def median_run(loads: list[Load], key) -> Load:
    """The run with the median ``key`` (of an even count, the lower middle one)."""
    return sorted(loads, key=key)[(len(loads) - 1) // 2]


def load_runs(server: "Server", req: DoorRequest, body_file: Path, args) -> tuple[Load, Load]:
    """Warm-up, then the 1-client and 32-client runs (the latter with the server's CPU per item)."""
    body_file.write_bytes(req.body)
    req.run(req.url, body_file, 200, 8, args.timeout, req.headers)
    one = counted(server, req, body_file, args.requests_1, 1, args.timeout)
    many = with_server_cpu(server, req, body_file, args.requests_32, args.timeout)
    return one, many


def counted(server: "Server", req: DoorRequest, body_file: Path, n: int, c: int, timeout_s: float) -> Load:
    """One run; errors also include what the server itself refused (gRPC errors hide in HTTP 200)."""
    refused0 = server.refused()
    load = req.run(req.url, body_file, n, c, timeout_s, req.headers)
    refused = int(server.refused() - refused0)
    if refused > load.errors:
        load.ok -= refused - load.errors
        load.errors = refused
    return load


def with_server_cpu(server: "Server", req: DoorRequest, body_file: Path, n: int, timeout_s: float,
                    items_per_request: int = 1) -> Load:
    """A 32-client run with the server's CPU per item; items/s counts every item of each request."""
    cpu0 = server.cpu_seconds()
    load = counted(server, req, body_file, n, 32, timeout_s)
    load.server_cpu_ms_per_item = 1000 * (server.cpu_seconds() - cpu0) / max(load.ok * items_per_request, 1)
    load.items_s *= items_per_request
    return load


def render_doors(rows) -> str:
    """Every door side by side: throughput against raw and against the JSON door, and CPU per item."""
    lines = [
        "| model | door | 1 client p50 ms | 1 client p99 ms | 32 clients items/s | vs raw b32 | vs JSON door "
        "| vs JSON door, each round (median) "
        "| 32 clients p50 ms | 32 clients p99 ms | errors | service CPU ms/item (32c) | vs raw CPU/item "
        "| client CPU ms/request (32c) | 32 clients items/s, each round |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    json_rate = {name: many.items_s for name, door, _, _, many, _ in rows if door == "json"}
    json_rounds = {name: rounds for name, door, _, _, _, rounds in rows if door == "json"}
    for name, door, raw, one, many, rounds in rows:
        vs_json = f"{many.items_s / json_rate[name]:.2f}x" if json_rate.get(name) else "-"
        lines.append(
            f"| {name} | {door} | {one.p50_ms:.2f} | {one.p99_ms:.2f} | {many.items_s:,.0f} | "
            f"{many.items_s / raw.b32_items_s:.2f}x | {vs_json} | {per_round_ratios(rounds, json_rounds.get(name))} | "
            f"{many.p50_ms:.1f} | {many.p99_ms:.1f} | "
            f"{one.errors + many.errors} | {many.server_cpu_ms_per_item:.2f} | "
            f"{many.server_cpu_ms_per_item / raw.cpu_ms_per_item:.2f}x | {many.client_cpu_ms_per_request:.3f} | "
            f"{' / '.join(f'{x:,.0f}' for x in rounds)} |"
        )
    return "\n".join(lines) + "\n"


def per_round_ratios(rounds: list[float], json_rounds: list[float] | None) -> str:
    """A door's rate over the JSON door's in the same round, each round and their median: the doors run
    one after another within a round, so a drift of the machine between rounds cancels out of these."""
    if not json_rounds or rounds is json_rounds or len(rounds) != len(json_rounds):
        return "-"
    ratios = [r / j if j else 0.0 for r, j in zip(rounds, json_rounds)]
    return f"{' / '.join(f'{x:.2f}' for x in ratios)} ({statistics.median(ratios):.2f}x)"


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
