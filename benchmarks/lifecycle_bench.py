"""A new version promoted, then rolled back, under constant load, without a restart.

The real ``bentoml serve`` with 2 workers and ``SERVICE_RELOAD=poll`` serves a registry copy
holding the model's version A (LATEST) and a version B (the same files under a new version id,
so both cost the same and answers can be told apart only by their version). 16 clients send one
item per request for the whole run; ``python -m training promote`` moves LATEST to B, later
``python -m training rollback`` moves it back. Reported: non-200 answers, p99 in the steady window
before the promote and in the 5 s after each switch, the time until every answer came from the
new version (every worker switched), and the workers' resident memory before, during and after
each switch (once the replaced version has been freed).

    .venv/bin/python benchmarks/lifecycle_bench.py --registry exported --model sentiment

Prints a table and replaces its own section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from service_bench import Server, machine, sample_item, versions, write_results  # noqa: E402

from modelkit.registry import latest_version, load_version  # noqa: E402

SECTION_START = "<!-- lifecycle_bench:start -->"
SECTION_END = "<!-- lifecycle_bench:end -->"
ENDPOINTS = {"text-classification": "/classify", "multi-label-classification": "/classify",
             "image-classification": "/classify_image", "translation": "/translate"}


@dataclass
class Answer:
    t: float  # seconds since the load started, at send
    seconds: float
    status: int
    version: str | None


@dataclass
class Run:
    answers: list[Answer] = field(default_factory=list)
    rss: list[tuple[float, float]] = field(default_factory=list)  # (t, MiB of every worker together)
    events: dict[str, float] = field(default_factory=dict)


def make_registry(src: Path, name: str, dst: Path) -> tuple[str, str]:
    """A registry copy with ``name`` at version A (LATEST) and a copy of it as version B."""
    a = latest_version(src, name)
    shutil.copytree(src / name / a, dst / name / a)
    b = f"{a}-b"
    shutil.copytree(src / name / a, dst / name / b)
    manifest = json.loads((dst / name / b / "manifest.json").read_text())
    manifest["version"] = b
    (dst / name / b / "manifest.json").write_text(json.dumps(manifest))
    (dst / name / "LATEST").write_text(a + "\n")
    return a, b


async def drive(url: str, body: dict, clients: int, seconds: float, run: Run, t0: float) -> None:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        async def one() -> None:
            while time.monotonic() - t0 < seconds:
                start = time.monotonic()
                try:
                    resp = await client.post(url, json=body)
                    version = resp.json().get("version") if resp.status_code == 200 else None
                    status = resp.status_code
                except Exception:
                    status, version = 0, None
                run.answers.append(Answer(start - t0, time.monotonic() - start, status, version))

        await asyncio.gather(*(one() for _ in range(clients)))


def sample_rss(server: Server, run: Run, t0: float, stop: threading.Event) -> None:
    import psutil

    root = psutil.Process(server.proc.pid)
    while not stop.wait(0.25):
        total = 0
        for p in root.children(recursive=True):
            try:
                if "bentoml" in " ".join(p.cmdline()) or p.name().startswith("python"):
                    total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        run.rss.append((time.monotonic() - t0, total / 2**20))


def training_cli(registry: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "training", *args, "--registry", str(registry), "--why", "lifecycle bench"],
                   cwd=ROOT, check=True, capture_output=True, text=True, timeout=60)


def switched_at(run: Run, since: float, until: float, new: str) -> float:
    """Seconds from ``since`` until the last request (sent before ``until``) that an old version answered:
    every request sent after it got ``new``, whichever worker took it."""
    old = [a.t for a in run.answers if since <= a.t < until and a.version not in (new, None)]
    return (max(old) - since) if old else 0.0


def p99(answers: list[Answer]) -> float:
    return 1000 * float(np.percentile([a.seconds for a in answers], 99)) if answers else float("nan")


def rss_at(run: Run, start: float, end: float) -> float:
    values = [m for t, m in run.rss if start <= t < end]
    return float(np.mean(values)) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--registry", type=Path, default=Path(os.environ.get("MODEL_REGISTRY", ROOT / "exported")))
    ap.add_argument("--model", default="sentiment")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the load; promote at 1/4, rollback at 5/8")
    ap.add_argument("--poll", type=float, default=1.0, help="SERVICE_RELOAD_INTERVAL_S")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)

    manifest, _ = load_version(args.registry, args.model)
    item, body = sample_item(manifest.task)
    body = body | {"model": args.model}
    promote_at, rollback_at, window = args.seconds / 4, args.seconds * 5 / 8, min(5.0, args.seconds / 8)
    run = Run()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="lifecycle-bench-") as tmp:
        registry = Path(tmp) / "registry"
        a, b = make_registry(args.registry, args.model, registry)
        env = {"SERVICE_WORKERS": str(args.workers), "SERVICE_RELOAD": "poll",
               "SERVICE_RELOAD_INTERVAL_S": str(args.poll), "SERVICE_MODELS": json.dumps([args.model])}
        server = Server(registry, env, Path(tmp))
        try:
            server.wait_ready()
            t0 = time.monotonic()
            stop = threading.Event()
            sampler = threading.Thread(target=sample_rss, args=(server, run, t0, stop), daemon=True)
            sampler.start()

            failures: list[str] = []

            def schedule() -> None:
                try:
                    time.sleep(promote_at)
                    # each switch counts from the moment the CLI returned (LATEST moved): its own start-up
                    # (a Python process importing the training package) is reported apart
                    run.events["promote-cli"] = time.monotonic() - t0
                    training_cli(registry, "promote", args.model, b)
                    run.events["promote"] = time.monotonic() - t0
                    time.sleep(max(0.0, rollback_at - (time.monotonic() - t0)))
                    run.events["rollback-cli"] = time.monotonic() - t0
                    training_cli(registry, "rollback", args.model)
                    run.events["rollback"] = time.monotonic() - t0
                except subprocess.CalledProcessError as exc:
                    failures.append(f"{' '.join(exc.cmd[3:5])} failed: {exc.stderr.strip()}")

            mover = threading.Thread(target=schedule, daemon=True)
            mover.start()
            asyncio.run(drive(server.url + ENDPOINTS[manifest.task], body, args.clients, args.seconds, run, t0))
            mover.join()
            if failures:
                raise SystemExit("; ".join(failures))
            stop.set()
            sampler.join()
            log = server.log.read_text(errors="replace")
        finally:
            server.stop()
    load_after = os.getloadavg()

    answers = run.answers
    bad = [x for x in answers if x.status != 200]
    promote, rollback = run.events["promote"], run.events["rollback"]
    before = run.events["promote-cli"]
    steady = [x for x in answers if before - 2 * window <= x.t < before]
    after_promote = [x for x in answers if promote <= x.t < promote + window]
    after_rollback = [x for x in answers if rollback <= x.t < rollback + window]
    load_s = [float(line.rsplit(" in ", 1)[1].split()[0]) for line in log.splitlines()
              if f"model {args.model} version" in line and " loaded from " in line]
    rss_before = rss_at(run, before - 2, before)
    rss_peak = max((m for t, m in run.rss if promote <= t < rollback), default=float("nan"))
    rss_after_promote = rss_at(run, rollback - 2, rollback)
    rss_after_rollback = rss_at(run, args.seconds - 2, args.seconds)
    rows = [
        ("answers / non-200", f"{len(answers)} / {len(bad)}"),
        ("p99 steady (2 windows before the promote)", f"{p99(steady):.1f} ms"),
        (f"p99 in the {window:.0f} s after the promote", f"{p99(after_promote):.1f} ms "
         f"({p99(after_promote) / p99(steady):.2f}x steady)"),
        (f"p99 in the {window:.0f} s after the rollback", f"{p99(after_rollback):.1f} ms "
         f"({p99(after_rollback) / p99(steady):.2f}x steady)"),
        ("every answer from B after the promote", f"{switched_at(run, promote, rollback, b):.2f} s "
         f"(poll interval {args.poll} s + load {max(load_s[args.workers:], default=float('nan')):.2f} s)"),
        ("every answer from A after the rollback", f"{switched_at(run, rollback, args.seconds, a):.2f} s "
         f"(poll interval {args.poll} s + load {max(load_s[2 * args.workers:], default=float('nan')):.2f} s)"),
        ("the CLI's own time (promote / rollback), before LATEST moved",
         f"{promote - run.events['promote-cli']:.2f} / {rollback - run.events['rollback-cli']:.2f} s"),
        ("workers' RSS before the promote", f"{rss_before:.0f} MiB"),
        ("peak RSS while two versions were loaded", f"{rss_peak:.0f} MiB"),
        ("RSS before the rollback (A freed)", f"{rss_after_promote:.0f} MiB ({rss_after_promote / rss_before - 1:+.1%})"),
        ("RSS at the end (B freed)", f"{rss_after_rollback:.0f} MiB ({rss_after_rollback / rss_before - 1:+.1%})"),
    ]
    table = "| measure | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
    header = (
        "## New version under load: promote and roll back (benchmarks/lifecycle_bench.py)\n\n"
        f"- machine: {machine()}\n- versions: {versions()}\n"
        f"- settings: {args.workers} workers, SERVICE_RELOAD=poll every {args.poll} s, {args.clients} clients "
        f"(httpx, asyncio, one process on the same cores) sending one item per request for {args.seconds:.0f} s; "
        f"promote at {promote:.1f} s, rollback at {rollback:.1f} s\n"
        f"- model: {args.model} {a} (A) and its copy {b} (B) (registry {args.registry})\n"
        f"- measured {time.strftime('%Y-%m-%d %H:%M %Z')}; load average (1 min) {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after\n\n"
    )
    print()
    print(header + table)
    if not args.no_write:
        write_results(args.results, header + table, SECTION_START, SECTION_END)
        print(f"wrote {args.results}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
