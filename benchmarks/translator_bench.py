"""Translator decoding speed: torch generate() vs ONNX without cache, with cache, int8 with cache.

Greedy decoding of held-out test sentences of a registered translator version, at batch 1
and batch 16. Prints tokens/s (generated tokens, EOS included, per second of decoding) and
per-batch latency, checks that every ONNX row produced the same tokens as torch, and writes
the table into benchmarks/RESULTS.md under its own heading (other sections are kept).

    python benchmarks/translator_bench.py --model de-en            # exported/de-en/LATEST
    python benchmarks/translator_bench.py --version-dir exported/en-ko/20261123-140000
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modelkit.manifest import Manifest  # noqa: E402
from modelkit.onnx_session import SessionSettings  # noqa: E402
from modelkit.registry import MANIFEST_FILE, default_root, latest_version  # noqa: E402
from modelkit.runtimes.translator import TranslatorRuntime  # noqa: E402

HEADING = "## Translator decoding (benchmarks/translator_bench.py)"


def held_out_sources(manifest: Manifest, runtime: TranslatorRuntime, n: int) -> list[list[int]]:
    """Token ids of the version's own test split (rebuilt from its data settings and checked by fingerprint)."""
    from training.data.translation import load_splits

    data = manifest.training.config["data"]
    splits = load_splits(manifest.name, seed=data["seed"], val_size=data["val_size"], test_size=data["test_size"],
                         max_train=data.get("max_examples"))
    if splits.fingerprint != manifest.dataset.fingerprint:
        print(f"warning: data fingerprint {splits.fingerprint[:12]} differs from the manifest's "
              f"{manifest.dataset.fingerprint[:12]}", file=sys.stderr)
    out = []
    for pair in splits.test:
        try:
            out.append(runtime.validate(pair.src))
        except Exception:  # too long for the model: skipped like the evaluation does
            continue
        if len(out) == n:
            break
    return out


def timed(fn, batches):
    """(per-batch seconds, outputs) of running ``fn`` over every batch once."""
    times, outs = [], []
    for b in batches:
        t = time.perf_counter()
        outs.extend(fn(b))
        times.append(time.perf_counter() - t)
    return times, outs


def run(version_dir: Path, n_sentences: int, threads: int, max_new_tokens: int | None) -> tuple[list[dict], dict]:
    import torch

    from training.families.translator import TORCH_DIR, load_torch_model, torch_generate

    torch.set_num_threads(threads)
    manifest = Manifest.load(version_dir / MANIFEST_FILE)
    settings = dict(provider="cpu", intra_op_threads=threads)
    fp32 = TranslatorRuntime(manifest, version_dir, SessionSettings(variant="fp32", **settings))
    int8 = TranslatorRuntime(manifest, version_dir, SessionSettings(variant="int8", **settings))
    fp32.load()
    int8.load()
    model = load_torch_model(version_dir / TORCH_DIR)
    max_new = max_new_tokens or manifest.generation.max_new_tokens
    sources = held_out_sources(manifest, fp32, n_sentences)

    rows = []
    for batch_size in (1, 16):
        n = len(sources) if batch_size > 1 else min(len(sources), max(16, n_sentences // 4))
        batches = [sources[i:i + batch_size] for i in range(0, n, batch_size)]
        engines = {
            "torch generate()": lambda b: torch_generate(model, b, num_beams=1, max_new_tokens=max_new,
                                                         batch_size=len(b)),
            "ONNX fp32, no cache": lambda b: [h.tokens for h in fp32.generate_ids(
                b, num_beams=1, max_new_tokens=max_new, use_cache=False)],
            "ONNX fp32, KV cache": lambda b: [h.tokens for h in fp32.generate_ids(b, num_beams=1, max_new_tokens=max_new)],
            "ONNX int8, KV cache": lambda b: [h.tokens for h in int8.generate_ids(b, num_beams=1, max_new_tokens=max_new)],
        }
        for fn in engines.values():  # warm up every engine once
            fn(batches[0])
        reference = None
        for name, fn in engines.items():
            times, outs = timed(fn, batches)
            tokens = sum(len(o) for o in outs)
            if reference is None:
                reference = outs
            rows.append({
                "engine": name, "batch": batch_size, "sentences": n, "tokens": tokens,
                "tokens_per_s": tokens / sum(times), "latency_ms_p50": 1000 * statistics.median(times),
                "latency_ms_p90": 1000 * float(np.quantile(times, 0.9)),
                "same_as_torch": float(np.mean([a == b for a, b in zip(outs, reference)])),
            })
    info = {"version": f"{manifest.name}/{manifest.version}", "params": manifest.training.num_parameters,
            "max_new_tokens": max_new, "threads": threads}
    return rows, info


def table(rows: list[dict]) -> str:
    torch_tps = {r["batch"]: r["tokens_per_s"] for r in rows if r["engine"].startswith("torch")}
    lines = ["| engine | batch | sentences | tokens/s | speed-up vs torch | latency p50 (ms/batch) | p90 | same tokens as torch |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['engine']} | {r['batch']} | {r['sentences']} | {r['tokens_per_s']:.0f} | "
            f"{r['tokens_per_s'] / torch_tps[r['batch']]:.2f}x | {r['latency_ms_p50']:.1f} | {r['latency_ms_p90']:.1f} | "
            f"{r['same_as_torch']:.1%} |"
        )
    return "\n".join(lines)


START, END = "<!-- translator_bench:start -->", "<!-- translator_bench:end -->"


def write_section(path: Path, body: str) -> None:
    """Replace (or append) this benchmark's marked section of RESULTS.md; other sections are untouched."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    section = f"{START}\n{HEADING}\n\n{body.strip()}\n{END}"
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="registered model name(s) (LATEST); default de-en and en-ko")
    parser.add_argument("--version-dir", action="append", type=Path, help="explicit version folder(s)")
    parser.add_argument("--registry", type=Path, default=None, help="registry root (default $MODEL_REGISTRY or ./exported)")
    parser.add_argument("--sentences", type=int, default=64, help="test sentences decoded at batch 16 (a quarter at batch 1)")
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the manifest's")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)

    root = args.registry or default_root()
    dirs = list(args.version_dir or [])
    for name in args.model or ([] if dirs else ["de-en", "en-ko"]):
        version = latest_version(root, name)
        if version is None:
            print(f"{name}: no servable version under {root}; train it first", file=sys.stderr)
            continue
        dirs.append(root / name / version)
    if not dirs:
        return 2
    load_before = os.getloadavg()
    parts = []
    for d in dirs:
        rows, info = run(d, args.sentences, args.threads, args.max_new_tokens)
        t = table(rows)
        header = (f"### {info['version']} ({info['params']:,} parameters), greedy, max_new_tokens "
                  f"{info['max_new_tokens']}, {info['threads']} threads")
        print(header + "\n\n" + t + "\n", flush=True)
        parts.append(header + "\n\n" + t)
    load_after = os.getloadavg()
    note = (f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()} with "
            f"{os.cpu_count()} CPU cores; 1-minute load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
            "(the machine is shared: absolute numbers move with the load, the ratios less so). tokens/s counts "
            "generated tokens (EOS included) per second of decoding; latency is per batch.")
    if not args.no_write:
        write_section(args.results, note + "\n\n" + "\n\n".join(parts))
        print(f"written to {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
