"""Command line: ``python -m training train|models|config``.

``torchrun --nproc-per-node N -m training train ...`` trains each model with N processes
(DistributedDataParallel); rank 0 publishes.

Exit codes: 0 ok; 1 a model failed its gate (published, not servable, LATEST untouched);
2 bad config or bad data (nothing published).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from modelkit.registry import default_root, list_versions

from .config import PRESETS, ConfigError, ModelConfig, apply_override, deep_merge, load_config_file, validate_config
from .family import DataError

EXIT_GATE = 1
EXIT_INPUT = 2


def resolve_configs(
    models: list[str] | None,
    preset: str,
    *,
    config_file: str | None = None,
    data: list[str] = (),
    sets: list[str] = (),
) -> dict[str, ModelConfig]:
    """Validated config per selected model: preset, then config file, --data, --set."""
    from .families import available_models, default_models

    registered = available_models()
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    names = models or default_models()
    if not names:
        raise ConfigError("no model families are registered (see training/families/__init__.py)")
    unknown = [n for n in names if n not in registered]
    if unknown:
        raise ConfigError(f"unknown model(s) {', '.join(unknown)}; registered: {', '.join(registered)}")
    raw: dict[str, dict] = {}
    for n in names:
        presets = registered[n].presets()
        if preset not in presets:
            raise ConfigError(f"{n}: family has no {preset!r} preset")
        raw[n] = presets[preset]
    if config_file:
        file_cfg = load_config_file(config_file)
        for n, section in file_cfg.items():
            if n not in raw:
                raise ConfigError(f"{config_file}: model {n!r} is not selected (selected: {', '.join(names)})")
            raw[n] = deep_merge(raw[n], section)
    for item in data:
        n, sep, path = item.partition("=")
        if not sep or n not in raw:
            raise ConfigError(f"--data {item!r}: expected NAME=PATH with NAME one of {', '.join(names)}")
        raw[n].setdefault("data", {})["path"] = path
    for item in sets:
        apply_override(raw, item, names)
    return {n: validate_config(n, registered[n].config_class, raw[n]) for n in names}


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parallel_jobs(jobs: str, configs: dict[str, ModelConfig], families: dict) -> int:
    """How many models train at once: ``auto`` runs models in separate processes only when every
    selected family allows it (``concurrent_training``) and each pins ``train.threads``, as many
    as the CPU cores hold; everything else trains one model after another."""
    if jobs != "auto":
        try:
            n = int(jobs)
        except ValueError:
            n = 0
        if n < 1:
            raise ConfigError(f"--jobs {jobs!r}: expected a positive integer or auto")
        return min(n, len(configs))
    threads = [cfg.train.threads for cfg in configs.values()]
    if len(configs) < 2 or None in threads or not all(
        getattr(families[name], "concurrent_training", False) for name in configs
    ):
        return 1
    return max(1, min(len(configs), (os.cpu_count() or 1) // max(threads)))


def _train_one(name: str, cfg: ModelConfig, options: dict) -> tuple[bool, object]:
    """Run one model (in this process or a worker): (gate passed, ModelResult)."""
    from .families import available_models
    from .pipeline import GateFailed, run_model

    try:
        return True, run_model(name, available_models()[name], cfg, **options)
    except GateFailed as exc:  # the result travels back; the exception itself does not pickle
        print(f"\n[{name}] GATE FAILED: {exc}", file=sys.stderr, flush=True)
        return False, exc.result


def cmd_train(args: argparse.Namespace) -> int:
    from .distributed import env_world_size, init_from_env, shutdown, uses_cuda
    from .families import available_models

    configs = resolve_configs(
        args.models, args.preset, config_file=args.config, data=args.data or [], sets=args.set or []
    )
    distributed = env_world_size() > 1
    jobs = 1 if distributed else parallel_jobs(args.jobs, configs, available_models())
    ctx = init_from_env(use_cuda=uses_cuda(configs)) if distributed else None
    try:
        return _run_all(args, configs, jobs, ctx)
    finally:
        if ctx is not None:
            shutdown(ctx)


def _run_all(args: argparse.Namespace, configs: dict[str, ModelConfig], jobs: int, ctx) -> int:
    registry = Path(args.registry) if args.registry else default_root()
    options = {
        "registry_root": registry, "data_dir": Path(args.data_dir), "preset": args.preset,
        "command": "python -m training " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "checkpoint_dir": Path(args.checkpoint_dir), "resume": args.resume,
    }
    if ctx is not None:
        options["ctx"] = ctx
    failed: list[str] = []
    summary = []
    t_all = time.perf_counter()
    if jobs > 1:
        print(f"training {len(configs)} models in {jobs} parallel processes", flush=True)
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {name: pool.submit(_train_one, name, cfg, options) for name, cfg in configs.items()}
            outcomes = {name: f.result() for name, f in futures.items()}
    else:
        outcomes = {name: _train_one(name, cfg, options) for name, cfg in configs.items()}
    for name, (passed, result) in outcomes.items():
        if not passed:
            failed.append(name)
        if result is not None:  # None: a torchrun rank > 0 (rank 0 publishes and reports)
            summary.append(result)
    if ctx is not None and not ctx.is_main:
        return 0
    total = time.perf_counter() - t_all
    print(f"\n=== {len(summary)} model(s) in {total:.0f} s ===")
    for r in summary:
        print(r.summary_line())
    if failed:
        print(f"gate failed for: {', '.join(failed)} (published as not servable; LATEST unchanged)", file=sys.stderr)
        return EXIT_GATE
    return 0


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def format_table(rows) -> str:
    """The registry as a fixed-width table (``*`` marks the LATEST version)."""
    headers = ["name", "version", "task", "metric", "value", "baseline", "gate", "size", "created"]
    lines = [
        [
            r.name,
            r.version + (" *" if r.latest else ""),
            r.task,
            r.metric,
            "-" if r.value is None else f"{r.value:.4f}",
            "-" if r.baseline is None else f"{r.baseline:.4f}",
            r.gate,
            _size(r.size_bytes),
            r.created,
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*headers), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*line) for line in lines]
    return "\n".join(out)


def cmd_models(args: argparse.Namespace) -> int:
    registry = Path(args.registry) if args.registry else default_root()
    rows = list_versions(registry)
    if not rows:
        print(f"no models registered under {registry}")
        return 0
    print(format_table(rows))
    print("(* = LATEST, the version serving loads)")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    configs = resolve_configs(args.models, args.preset, config_file=args.config, data=args.data or [], sets=args.set or [])
    print(json.dumps({n: c.model_dump(mode="json") for n, c in configs.items()}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add_run_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--preset", default="quick", choices=PRESETS, help="config preset (default quick)")
        p.add_argument("--models", type=_csv, help="comma-separated model names (default: all in the default run)")
        p.add_argument("--config", help="JSON/TOML file {model: {section: {field: value}}}")
        p.add_argument("--data", action="append", metavar="NAME=PATH", help="your own CSV/JSONL (or image folder)")
        p.add_argument("--set", action="append", metavar="MODEL.SECTION.FIELD=VALUE", help="override a config field")

    train = sub.add_parser("train", help="prepare data, train, export, gate and register models")
    add_run_options(train)
    train.add_argument("--registry", help="registry root (default $MODEL_REGISTRY or ./exported)")
    train.add_argument("--data-dir", default="data", help="where dataset snapshots are written (default ./data)")
    train.add_argument("--resume", action="store_true", help="continue each model from its checkpoint in "
                       "--checkpoint-dir when there is one (a killed run; a fresh start otherwise)")
    train.add_argument("--checkpoint-dir", default=os.environ.get("TRAINING_CHECKPOINT_DIR", "checkpoints"),
                       help="where run checkpoints are kept until the model is published "
                       "(default $TRAINING_CHECKPOINT_DIR or ./checkpoints)")
    train.add_argument("--jobs", default="auto", help="models trained at once, each in its own process (default auto: "
                       "in parallel only for families that allow it, e.g. the single-thread translators)")
    train.set_defaults(func=cmd_train)

    models = sub.add_parser("models", help="list the registry")
    models.add_argument("--registry", help="registry root (default $MODEL_REGISTRY or ./exported)")
    models.set_defaults(func=cmd_models)

    config = sub.add_parser("config", help="print the resolved config of the selected models")
    add_run_options(config)
    config.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except DataError as exc:
        print(f"data error: {exc}", file=sys.stderr)
        return EXIT_INPUT
