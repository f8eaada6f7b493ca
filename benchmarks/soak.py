"""Soak: a steady closed-loop load for minutes; resident memory, file descriptors and p99 over time.

``--clients`` wrk connections (16) send one item per request back to back to a real
``bentoml serve`` for ``--minutes`` (10), in windows of ``--window`` seconds (30): wrk reports
each window's p50/p99 and answers, and a sampler reads the resident memory (RSS) and open file
descriptors of every server process (arbiter and workers) every ``--sample`` seconds. After
``--warmup`` windows, RSS and descriptors should stay within 5% (max vs min over the remaining
windows) and p99 steady (max vs median of the windows' p99).

    .venv/bin/python benchmarks/soak.py --registry exported [--model sentiment] [--minutes 10]

Replaces its section of benchmarks/RESULTS.md (``--no-write`` to only print; ``--json FILE``
keeps every window). tests/test_soak_script.py runs it for 30 s on a smoke model.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from service_bench import WRK_SCRIPT, Server, machine, versions, write_results  # noqa: E402

from modelkit.registry import load_version  # noqa: E402

SECTION_START = "<!-- soak:start -->"
SECTION_END = "<!-- soak:end -->"
FLAT = 0.05


def request_for(registry: Path, model: str) -> tuple[str, dict]:
    """(path, body) of one one-item request for ``model``'s task."""
    manifest, _ = load_version(registry, model)
    if manifest.task == "translation":
        return "/translate", {"model": model, "texts": ["Das Haus ist klein."], "max_new_tokens": 16}
    if manifest.task == "image-classification":
        raise SystemExit("soak: pick a text or translation model")
    return "/classify", {"model": model, "texts": ["the delivery was late again but the support team was lovely"]}


def server_processes(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


class Sampler(threading.Thread):
    """RSS (bytes) and open descriptors summed over the server's processes, every ``every`` seconds."""

    def __init__(self, pid: int, every: float):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, int, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            rss = fds = 0
            for p in server_processes(self.pid):
                try:
                    rss += p.memory_info().rss
                    fds += p.num_fds()
                except psutil.Error:
                    pass
            self.samples.append((time.monotonic(), rss, fds))


def wrk_window(url: str, body_file: Path, clients: int, seconds: float) -> dict:
    """One window of wrk (one thread, ``clients`` connections): answers, non-200, socket errors, p50/p99."""
    env = {**os.environ, "BODY": str(body_file), "N": str(10**12)}
    cmd = ["wrk", "-t1", f"-c{clients}", f"-d{seconds:g}s", "--timeout", "20s", "--latency", "-s", str(WRK_SCRIPT), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, env=env).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("FIXED_COUNT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no FIXED_COUNT line:\n{out[-2000:]}")
    r = json.loads(line.split(" ", 1)[1])
    return {"answers": r["responses"], "non_200": r["non_200"], "socket_errors": r["socket_errors"],
            "requests_s": r["responses"] / seconds, "p50_ms": r["p50_us"] / 1000, "p99_ms": r["p99_us"] / 1000}


def spread(values: list[float]) -> float:
    """(max - min) / min."""
    return (max(values) - min(values)) / min(values) if values and min(values) > 0 else float("nan")


def soak(registry: Path, model: str, *, minutes: float, clients: int, window: float, sample: float,
         workers: int, workdir: Path, env: dict[str, str] | None = None) -> dict:
    path, body = request_for(registry, model)
    body_file = workdir / "body.json"
    body_file.write_text(json.dumps(body))
    server = Server(registry, {"SERVICE_MODELS": json.dumps([model]), "SERVICE_WORKERS": str(workers), **(env or {})},
                    workdir)
    windows = []
    load_before = os.getloadavg()[0]
    try:
        server.wait_ready()
        sampler = Sampler(server.proc.pid, sample)
        sampler.start()
        t0 = time.monotonic()
        while time.monotonic() - t0 < minutes * 60 - 1:
            start = time.monotonic()
            result = wrk_window(server.url + path, body_file, clients, window)
            end = time.monotonic()
            inside = [s for s in sampler.samples if start <= s[0] <= end] or sampler.samples[-1:]
            result.update(t_s=round(end - t0, 1), rss_mb=max(s[1] for s in inside) / 2**20,
                          fds=max(s[2] for s in inside))
            windows.append(result)
            print(json.dumps(result), flush=True)
        sampler.stop.set()
    finally:
        server.stop()
    return {"model": model, "version": load_version(registry, model)[0].version, "path": path, "clients": clients,
            "window_s": window, "minutes": minutes, "workers": workers, "env": env or {}, "load_before": load_before,
            "load_after": os.getloadavg()[0], "windows": windows}


def verdict(report: dict, warmup: int) -> dict:
    steady = report["windows"][warmup:] or report["windows"]
    second_half = report["windows"][len(report["windows"]) // 2:]
    p99s = [w["p99_ms"] for w in steady]
    return {
        "rss_spread": spread([w["rss_mb"] for w in steady]),
        "rss_spread_second_half": spread([w["rss_mb"] for w in second_half]),
        "fds_spread": spread([w["fds"] for w in steady]),
        "p99_max_over_median": max(p99s) / statistics.median(p99s) if p99s else float("nan"),
        "errors": sum(w["non_200"] + w["socket_errors"] for w in report["windows"]),
        "answers": sum(w["answers"] for w in report["windows"]),
        "warmup_windows": warmup,
    }


def markdown(report: dict, v: dict) -> str:
    flat = lambda x: "PASS" if x <= FLAT else "FAIL"  # noqa: E731
    lines = [
        "## Soak (benchmarks/soak.py)", "",
        f"- machine: {machine()}; {versions()}",
        f"- {report['clients']} wrk connections, one item per request to {report['path']} ({report['model']} "
        f"{report['version']}), {report['minutes']:g} min in {report['window_s']:g} s windows, {report['workers']} "
        f"worker(s){''.join(f', {k}={v}' for k, v in report['env'].items())}; measured "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average {report['load_before']:.1f} before, "
        f"{report['load_after']:.1f} after (other jobs share these cores)",
        f"- after {v['warmup_windows']} warm-up window(s): RSS spread {100 * v['rss_spread']:.1f}% "
        f"({flat(v['rss_spread'])}, limit 5%; second half of the run {100 * v['rss_spread_second_half']:.1f}%), "
        f"descriptors spread {100 * v['fds_spread']:.1f}% "
        f"({flat(v['fds_spread'])}), p99 max/median {v['p99_max_over_median']:.2f}; {v['answers']:,} answers, "
        f"{v['errors']} errors", "",
        "| t (s) | requests/s | p50 ms | p99 ms | errors | RSS MB (all processes) | open fds |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for w in report["windows"]:
        lines.append(f"| {w['t_s']:.0f} | {w['requests_s']:,.0f} | {w['p50_ms']:.2f} | {w['p99_ms']:.2f} | "
                     f"{w['non_200'] + w['socket_errors']} | {w['rss_mb']:.1f} | {w['fds']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--registry", type=Path, default=ROOT / "exported")
    parser.add_argument("--model", default="sentiment")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--window", type=float, default=30)
    parser.add_argument("--sample", type=float, default=2)
    parser.add_argument("--warmup", type=int, default=2, help="windows left out of the flatness figures")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="service setting (repeat)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server on the way out (finally)
    with tempfile.TemporaryDirectory() as tmp:
        report = soak(args.registry, args.model, minutes=args.minutes, clients=args.clients, window=args.window,
                      sample=args.sample, workers=args.workers, workdir=Path(tmp),
                      env=dict(e.split("=", 1) for e in args.env))
    v = verdict(report, args.warmup)
    report["verdict"] = v
    text = markdown(report, v)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if not args.no_write:
        write_results(ROOT / "benchmarks" / "RESULTS.md", text, SECTION_START, SECTION_END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
