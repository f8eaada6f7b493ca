"""Command line: ``python -m training train|pretrain|models|config|promote|rollback|history|import``.

Exit codes: 0 ok; 1 a model failed its gate (published, not servable, LATEST untouched; or
``promote`` refused a gate-failed version); 2 bad config, bad data or an unknown model/version
(nothing published, LATEST untouched).

``torchrun --nproc-per-node N -m training train ...`` trains each model with N processes
(DistributedDataParallel); rank 0 publishes.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import os
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from modelkit import registry as reg
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
        raw[n] = copy.deepcopy(presets[preset])  # --set edits it in place; a family may share its dicts
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


def _command_line() -> str:
    return "python -m training " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def cmd_pretrain(args: argparse.Namespace) -> int:
    from . import pretrain

    registry = Path(args.registry) if args.registry else default_root()
    cfg = pretrain.resolve_config(args.preset, args.set or [])
    pretrain.run(cfg, registry=registry, data_dir=Path(args.data_dir), preset=args.preset, command=_command_line(),
                 name=args.name)
    return 0


def ensure_pretrained(configs: dict[str, ModelConfig], registry: Path, data_dir: Path, preset: str,
                      *, distributed: bool) -> float:
    """Point every ``model.pretrained`` at a version folder, pretraining (once) a named encoder that
    is not in the registry yet; returns the seconds spent pretraining."""
    from . import pretrain, pretrained

    spent = 0.0
    for name, cfg in configs.items():
        ref = getattr(cfg.model, "pretrained", None)
        if not ref:
            continue
        folder = pretrained.resolve(ref, registry)
        if folder is None:
            if distributed:
                raise ConfigError(f"{name}.model.pretrained: no {ref!r} under {registry / pretrained.PRETRAINED_DIR}; "
                                  "run `python -m training pretrain` first")
            t0 = time.perf_counter()
            folder = pretrain.run(pretrain.resolve_config(preset), registry=registry, data_dir=data_dir, preset=preset,
                                  command=_command_line() + "  # pretraining stage", name=ref)
            spent += time.perf_counter() - t0
        cfg.model.pretrained = str(folder)
        shape = pretrained.load_manifest(folder).config["model"]
        for key in pretrained.SHAPE_FIELDS:  # the recorded config says what was actually fine-tuned
            if hasattr(cfg.model, key):
                setattr(cfg.model, key, shape[key])
    return spent


def cmd_train(args: argparse.Namespace) -> int:
    from .distributed import env_world_size, init_from_env, shutdown, uses_cuda
    from .families import available_models

    configs = resolve_configs(
        args.models, args.preset, config_file=args.config, data=args.data or [], sets=args.set or []
    )
    distributed = env_world_size() > 1
    registry = Path(args.registry) if args.registry else default_root()
    args.pretrain_seconds = ensure_pretrained(configs, registry, Path(args.data_dir), args.preset,
                                              distributed=distributed)
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
        "command": _command_line(),
        "checkpoint_dir": Path(args.checkpoint_dir), "resume": args.resume,
        "promote": not args.no_promote,
    }
    if ctx is not None:
        options["ctx"] = ctx
    failed: list[str] = []
    summary = []
    outcomes: dict[str, tuple[bool, object]] = {}
    errors: dict[str, BaseException] = {}
    t_all = time.perf_counter()
    if jobs > 1:
        print(f"training {len(configs)} models in {jobs} parallel processes", flush=True)
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {name: pool.submit(_train_one, name, cfg, options) for name, cfg in configs.items()}
            for name, f in futures.items():
                try:
                    outcomes[name] = f.result()
                except Exception as exc:  # the others still finish and are reported; the first error decides the exit
                    errors[name] = exc
                    print(f"\n[{name}] FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
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
    if getattr(args, "pretrain_seconds", 0):
        print(f"\n=== pretraining stage (shared, cached in the registry): {args.pretrain_seconds:.0f} s ===")
    print(f"\n=== {len(summary)} model(s) in {total:.0f} s ===")
    for r in summary:
        print(r.summary_line())
    if errors:
        print(f"failed with an error: {', '.join(errors)} (nothing published for them)", file=sys.stderr)
        raise next(iter(errors.values()))
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
    history = _history_lines(registry, sorted({r.name for r in rows}))
    if history:
        print("history (python -m training history NAME):")
        print("\n".join(history))
    return 0


def _history_lines(registry: Path, names: list[str]) -> list[str]:
    """One line per model with a history: its number of LATEST moves and the last one."""
    lines = []
    for name in names:
        try:
            history = reg.read_history(registry, name)
        except reg.RegistryError as exc:
            lines.append(f"  {name}: {exc}")
            continue
        if history:
            lines.append(f"  {name}: {len(history)} LATEST move(s); last: {_record_line(history[-1])}")
    return lines


def _record_line(r: reg.HistoryRecord) -> str:
    return (f"{r.when.isoformat(timespec='seconds')} {r.action} {r.from_version or '-'} -> {r.to_version} "
            f"by {r.who}" + (f": {r.why}" if r.why else ""))


def cmd_promote(args: argparse.Namespace) -> int:
    registry = Path(args.registry) if args.registry else default_root()
    try:
        record = reg.promote(registry, args.name, args.version, why=args.why or "", who=args.who)
    except reg.GateRefused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return EXIT_GATE
    except reg.RegistryError as exc:
        print(f"registry error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    if record is None:
        print(f"{args.name}: {args.version} is already LATEST; nothing changed")
    else:
        print(f"{args.name}: LATEST {record.from_version or '-'} -> {record.to_version} (promoted by {record.who})")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    registry = Path(args.registry) if args.registry else default_root()
    try:
        record, how = reg.rollback(registry, args.name, why=args.why or "", who=args.who)
    except reg.RegistryError as exc:
        print(f"registry error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    print(f"{args.name}: LATEST {record.from_version} -> {record.to_version} (rolled back by {record.who}; {how})")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    registry = Path(args.registry) if args.registry else default_root()
    try:
        reg.check_known(registry, args.name)
        history = reg.read_history(registry, args.name)
    except reg.RegistryError as exc:
        print(f"registry error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    shown = history[-args.limit:] if args.limit else history
    for r in shown:
        print(r.to_json() if args.json else _record_line(r))
    if not history and not args.json:
        print(f"{args.name}: no history recorded (LATEST is {reg.latest_version(registry, args.name) or 'unset'})")
    return 0


def _floats(text: str) -> list[float]:
    try:
        return [float(t) for t in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


IMPORT_FLAGS = ("name", "task", "version", "model", "tokenizer", "labels", "labels_file", "sample", "expected", "eval",
                "min_metric", "output", "max_length", "image_size", "channels", "mean", "std", "source_lang",
                "target_lang", "description", "source", "licence")


def cmd_import(args: argparse.Namespace) -> int:
    from .import_spec import ImportRejected, load_spec
    from .importer import import_model

    registry = Path(args.registry) if args.registry else default_root()
    flags = {k: getattr(args, k) for k in IMPORT_FLAGS}
    if args.no_promote:
        flags["promote"] = False
    try:
        spec = load_spec(args.spec, flags, args.set or [])
        result = import_model(spec, registry,
                              command="python -m training " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    except ImportRejected as exc:
        print(f"import rejected (nothing written to {registry}): {exc}", file=sys.stderr)
        return EXIT_INPUT
    m = result.manifest
    print(f"imported {m.name} {m.version} ({m.task}) in {result.seconds:.1f} s: {result.path}")
    for p in m.parity:
        print(f"  parity: {p.notes}: max abs diff {p.max_abs_diff:.2e} on {p.n_inputs} items -> pass")
    print(f"  reference profile: {m.reference_profile.n_samples} sample items, "
          f"features {', '.join(sorted(m.reference_profile.features))}")
    if m.metrics:
        print("  eval: " + ", ".join(f"{k} {v:.4f}" for k, v in m.metrics["fp32"].items()))
    for line in m.gate.reasons:
        print(f"  gate {line}")
    if not m.gate.passed:
        print(f"gate failed for {m.name} {m.version} (published as not servable; LATEST unchanged)", file=sys.stderr)
        return EXIT_GATE
    print(f"  LATEST {'-> ' + m.version if result.latest_moved else 'unchanged (promote=false)'}")
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
    train.add_argument("--no-promote", action="store_true",
                       help="publish a version that passes its gate without moving LATEST (roll it out as a "
                       "candidate first, then `promote` it)")
    train.add_argument("--jobs", default="auto", help="models trained at once, each in its own process (default auto: "
                       "in parallel only for families that allow it, e.g. the single-thread translators)")
    train.set_defaults(func=cmd_train)

    pre = sub.add_parser("pretrain", help="pretrain the shared text encoder (masked language model) into the registry")
    pre.add_argument("--preset", default="quick", choices=PRESETS, help="config preset (default quick)")
    pre.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="override a config field")
    pre.add_argument("--name", default="text-encoder", help="artefact name (default text-encoder)")
    pre.add_argument("--registry", help="registry root (default $MODEL_REGISTRY or ./exported)")
    pre.add_argument("--data-dir", default="data", help="where dataset snapshots are written (default ./data)")
    pre.set_defaults(func=cmd_pretrain)

    models = sub.add_parser("models", help="list the registry")
    models.add_argument("--registry", help="registry root (default $MODEL_REGISTRY or ./exported)")
    models.set_defaults(func=cmd_models)

    def add_lifecycle_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--why", help="reason, kept in the history")
        p.add_argument("--who", help="who moves LATEST (default $MODELSERVE_USER or the login name)")
        p.add_argument("--registry", help="registry root (default $MODEL_REGISTRY or ./exported)")

    promote = sub.add_parser("promote", help="make a gate-passing version LATEST (recorded in HISTORY.jsonl)")
    promote.add_argument("name")
    promote.add_argument("version")
    add_lifecycle_options(promote)
    promote.set_defaults(func=cmd_promote)

    rollback = sub.add_parser("rollback", help="move LATEST back to the version before it (see the history)")
    rollback.add_argument("name")
    add_lifecycle_options(rollback)
    rollback.set_defaults(func=cmd_rollback)

    history = sub.add_parser("history", help="the LATEST moves of a model, oldest first")
    history.add_argument("name")
    history.add_argument("--limit", type=int, default=0, help="only the last N records")
    history.add_argument("--json", action="store_true", help="the raw JSON lines")
    history.add_argument("--registry", help="registry root (default $MODEL_REGISTRY or ./exported)")
    history.set_defaults(func=cmd_history)

    imp = sub.add_parser("import", help="register an existing ONNX model (bring your own model)",
                         description="Flags override the --spec file; any other spec field: --set FIELD=VALUE. "
                                     "See README, 'Bring your own ONNX model'.")
    imp.add_argument("--spec", help="TOML/JSON file with the import settings (paths relative to it)")
    imp.add_argument("--name")
    imp.add_argument("--task", help="text-classification, multi-label-classification, image-classification, translation")
    imp.add_argument("--version", help="version id (default: a new timestamp)")
    imp.add_argument("--model", help="the .onnx file (translators: a folder with encoder/decoder/decoder_with_past.onnx)")
    imp.add_argument("--tokenizer", help="a `tokenizers` JSON file (text and translation)")
    imp.add_argument("--labels", type=_csv, help="comma-separated labels, in the order of the model's outputs")
    imp.add_argument("--labels-file", help="one label per line, or a JSON list")
    imp.add_argument("--sample", help="inputs for parity and the drift reference profile (file, or image folder)")
    imp.add_argument("--expected", help="the model's own outputs (logits) on the first sample items: .npy or .json")
    imp.add_argument("--eval", help="labelled file (or image folder root/<label>/) to measure the headline metric")
    imp.add_argument("--min-metric", type=float, help="gate: the headline metric on --eval must reach this")
    imp.add_argument("--output", help="classifier output to serve (default: the first)")
    imp.add_argument("--max-length", type=int, help="text: longest token sequence fed, [CLS]/[SEP] included")
    imp.add_argument("--image-size", type=int)
    imp.add_argument("--channels", type=int)
    imp.add_argument("--mean", type=_floats, help="image: per-channel mean, e.g. 0.5 or 0.485,0.456,0.406")
    imp.add_argument("--std", type=_floats)
    imp.add_argument("--source-lang")
    imp.add_argument("--target-lang")
    imp.add_argument("--description")
    imp.add_argument("--source", help="where the model and its training data come from (model card)")
    imp.add_argument("--licence")
    imp.add_argument("--no-promote", action="store_true", help="register without moving LATEST")
    imp.add_argument("--set", action="append", metavar="FIELD=VALUE", help="any spec field (JSON value)")
    imp.add_argument("--registry", help="registry root (default $MODEL_REGISTRY or ./exported)")
    imp.set_defaults(func=cmd_import)

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
