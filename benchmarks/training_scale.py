"""Training throughput with 1 and N processes (torchrun, DDP) through the real CLI.

Each setup runs ``[torchrun --standalone --nproc-per-node N] -m training train`` on a model's
quick-preset architecture and global batch for a bounded number of optimizer steps (data,
baselines, export and evaluation cut down to the minimum by ``--set``), then reads the version's
``train_steps.jsonl``: samples/s = global batch x steps / seconds between the end of the warm-up
steps and the last step (rank 0's clock, after each step's loss all-reduce). Writes a table into
benchmarks/RESULTS.md under its own heading (other sections are kept).

    python benchmarks/training_scale.py                       # fashion and sentiment: 1x2, 1x1, 2x1
    python benchmarks/training_scale.py --setups 1x1,2x1,4x1 --steps 60
    python benchmarks/training_scale.py --full                # GPU machine: fashion, full preset, 1 GPU

A setup ``PxT`` is P processes with T torch threads each. On a 2-core CPU, 2 processes x 1 thread
use the same cores as 1 process x 2 threads: DDP cannot add compute there, only show its overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Training scale-out (benchmarks/training_scale.py)"
START, END = "<!-- training_scale:start -->", "<!-- training_scale:end -->"
# the pipeline around training, cut down: samples/s only needs the optimizer steps
CUT_DOWN = {
    "fashion": ["data.max_examples=12000", "data.max_test=200", "data.baseline_max_train=200"],
    "sentiment": ["data.max_examples=12000"],
}
COMMON = ['export.exporters=["legacy"]', "export.quantize=false", "export.parity_inputs=32",
          "export.latency_repeats=1", "gate.criteria=[]", "train.progress=false", "train.epochs=1",
          "train.checkpoint_every=100000"]


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def run_setup(model: str, procs: int, threads: int | None, preset: str, sets: list[str], warmup: int,
              tmp: Path) -> dict:
    """One training run with ``procs`` processes of ``threads`` threads; samples/s after ``warmup`` steps."""
    tag = f"{model}-{procs}x{threads}"
    registry, checkpoints = tmp / f"reg-{tag}", tmp / f"ck-{tag}"
    launcher = ([str(Path(sys.executable).parent / "torchrun"), "--standalone", f"--nproc-per-node={procs}"]
                if procs > 1 else [sys.executable])
    if threads:
        sets = [*sets, f"train.threads={threads}"]
    cmd = [*launcher, "-m", "training", "train", "--preset", preset, "--models", model,
           "--registry", str(registry), "--checkpoint-dir", str(checkpoints), "--data-dir", str(ROOT / "data")]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{tag} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    (version_dir,) = [p for p in (registry / model).iterdir() if p.is_dir() and not p.name.startswith(".")]
    manifest = json.loads((version_dir / "manifest.json").read_text())
    step_log = [json.loads(line) for line in (version_dir / "train_steps.jsonl").read_text().splitlines()]
    if len(step_log) <= warmup + 1:
        raise SystemExit(f"{tag}: only {len(step_log)} steps; raise --steps")
    batch = manifest["training"]["config"]["train"]["batch_size"]
    measured = step_log[warmup:]
    seconds = measured[-1]["seconds"] - step_log[warmup - 1]["seconds"]
    return {
        "model": model, "processes": procs, "threads": threads, "global_batch": batch, "steps": len(measured),
        "seconds": round(seconds, 3), "samples_per_s": round(batch * len(measured) / seconds, 1),
        "ms_per_step": round(1000 * seconds / len(measured), 1), "wall_s": round(wall, 1),
        "first_loss": step_log[0]["loss"], "last_loss": step_log[-1]["loss"],
        "test_metrics": manifest["metrics"].get("fp32", {}), "device": manifest["training"]["device"],
        "train_s": manifest["training"]["duration_s"],
    }


def table(rows: list[dict]) -> str:
    out = ["| model | processes x threads | global batch | steps timed | ms/step | samples/s | vs best 1-process | loss first -> last step |",
           "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        ref = max((x["samples_per_s"] for x in rows if x["model"] == r["model"] and x["processes"] == 1), default=None)
        ratio = f"{r['samples_per_s'] / ref:.2f}x" if ref else "-"
        out.append(f"| {r['model']} | {r['processes']} x {r['threads']} | {r['global_batch']} | {r['steps']} | "
                   f"{r['ms_per_step']:.1f} | {r['samples_per_s']:,.1f} | {ratio} | "
                   f"{r['first_loss']:.3f} -> {r['last_loss']:.3f} |")
    return "\n".join(out)


def write_section(path: Path, body: str) -> None:
    """Replace (or append) this benchmark's marked section of RESULTS.md; other sections are untouched."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    section = f"{START}\n{HEADING}\n\n{body.strip()}\n{END}"
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    text = pattern.sub(lambda _: section, text, count=1) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="fashion,sentiment")
    parser.add_argument("--setups", default="1x2,1x1,2x1", help="comma-separated PROCESSESxTHREADS")
    parser.add_argument("--steps", type=int, default=45, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the timing")
    parser.add_argument("--full", action="store_true", help="GPU machine: the full preset of fashion on one GPU, "
                        "whole run, with its test metrics (replaces the setups)")
    parser.add_argument("--note", default="", help="what else ran on the machine (goes into RESULTS.md)")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="training-scale-") as tmp:
        if args.full:
            rows.append(run_setup("fashion", 1, None, "full", ["train.progress=false", "train.device=cuda"],
                                  args.warmup, Path(tmp)))
        else:
            for model in args.models.split(","):
                for setup in args.setups.split(","):
                    procs, threads = (int(x) for x in setup.lower().split("x"))
                    print(f"{model}: {procs} process(es) x {threads} thread(s) ...", flush=True)
                    sets = [*COMMON, *CUT_DOWN.get(model, []), f"train.max_steps_per_epoch={args.steps}"]
                    rows.append(run_setup(model, procs, threads, "quick", sets, args.warmup, Path(tmp)))
                    print(f"  {rows[-1]['samples_per_s']:,.1f} samples/s ({rows[-1]['ms_per_step']} ms/step)", flush=True)
    load_after = os.getloadavg()[0]
    libs = ", ".join(f"{p} {version(p)}" for p in ("torch", "transformers"))
    lines = [
        f"- machine: {cpu_name()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        f"- versions: python {platform.python_version()}, {libs}; backend gloo (CPU)",
        f"- settings: quick-preset architecture and global batch of each model, {args.steps} optimizer steps per run, "
        f"the first {args.warmup} left out of the timing; samples/s from rank 0's step clock",
        f"- measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; load average (1 min) {load_before:.1f} before, "
        f"{load_after:.1f} after" + (f"; {args.note}" if args.note else ""),
        "",
        table(rows),
    ]
    if args.full:
        r = rows[0]
        lines += ["", f"full preset, fashion, 1 GPU: training {r['train_s']:.0f} s, test metrics {r['test_metrics']}"]
    body = "\n".join(lines)
    print("\n" + body)
    if not args.no_write:
        write_section(args.results, body)
    print(json.dumps(rows, indent=1), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
