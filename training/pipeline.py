"""One model end to end: data -> baselines -> train -> export -> evaluate -> gate -> registry.

Everything is written into a hidden staging folder of the registry and renamed into place
only when complete (``modelkit.registry.publish``); any error discards the staging folder.
A model that fails its gate is published as not servable (LATEST untouched) and
:class:`GateFailed` is raised.
"""

from __future__ import annotations

import platform
import subprocess
import time
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from modelkit import registry
from modelkit.manifest import GateResult, Manifest, ReferenceProfile, TrainingInfo
from modelkit.runtimes import create_runtime

from . import checkpoint
from .config import ModelConfig
from .distributed import SINGLE, DistContext
from .export import cpu_sessions, export_all
from .family import Evaluation, Family
from .gate import check_baseline_names, evaluate_gate
from .model_card import write_model_card
from .trainer import Checkpointing, resolve_device, seed_everything, train

LIBRARIES = ("torch", "transformers", "tokenizers", "onnx", "onnxruntime", "scikit-learn", "numpy")


@dataclass
class ModelResult:
    name: str
    version: str
    path: Path
    seconds: float
    headline_metric: str
    metrics: dict[str, dict[str, float]]
    baseline_metrics: dict[str, dict[str, float]]
    gate: GateResult
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def summary_line(self) -> str:
        m = self.headline_metric
        base = ", ".join(f"{b} {v[m]:.4f}" for b, v in self.baseline_metrics.items() if m in v)
        int8 = self.metrics.get("int8", {}).get(m)
        return (
            f"{self.name:<10} {self.version}  {self.seconds:6.0f} s  {m} {self.metrics['fp32'][m]:.4f}"
            + (f" (int8 {int8:.4f})" if int8 is not None else "")
            + f"  baseline {base or '-'}  gate {'pass' if self.gate.passed else 'FAIL'}"
        )


class GateFailed(Exception):
    def __init__(self, result: ModelResult):
        self.result = result
        fails = [r for r in result.gate.reasons if r.startswith("FAIL")]
        super().__init__(f"{result.name} {result.version}: " + "; ".join(fails))


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            out[lib] = version(lib)
        except PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        ).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def unique_version(root: Path, name: str) -> str:
    """A new version id that no existing version folder uses."""
    base = registry.new_version_id()
    candidate, n = base, 1
    while (root / name / candidate).exists():
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def agreement(a: list, b: list) -> float:
    return sum(x == y for x, y in zip(a, b)) / max(len(a), 1)


def run_model(
    name: str,
    family: Family,
    cfg: ModelConfig,
    *,
    registry_root: Path,
    data_dir: Path,
    preset: str,
    command: str,
    promote: bool = True,
    ctx: DistContext = SINGLE,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
) -> ModelResult | None:
    """Train, export, evaluate, gate and publish one model; returns its summary.

    ``promote=False`` publishes a version that passed its gate without moving LATEST (a candidate to
    roll out first: ``python -m training promote`` moves LATEST later).
    Under torchrun rank 0 prepares the data and sends it to the other ranks, every rank trains,
    and rank 0 alone runs the baselines, exports, evaluates and publishes; the other ranks
    return None.
    ``checkpoint_dir``: where the run's checkpoint is kept (removed once the model is published).
    """
    t0 = time.perf_counter()
    main = ctx.is_main
    say = print if main else (lambda *a, **k: None)
    stages: dict[str, float] = {}

    def stage(label: str, since: float) -> float:
        now = time.perf_counter()
        stages[label] = round(now - since, 2)
        return now

    commit = git_commit()  # the code that trains, not whatever is checked out when it finishes
    say(f"\n=== {name} ({family.task}, preset {preset})"
        + (f", {ctx.world_size} processes ({ctx.backend})" if ctx.enabled else "") + " ===", flush=True)
    ckpt = Checkpointing(checkpoint.checkpoint_path(checkpoint_dir, name), resume) if checkpoint_dir else None
    if ckpt is not None and resume:
        done = ctx.broadcast(_published_before(name, ckpt, cfg, registry_root) if main else None)
        if done is not None:
            return _already_published(name, done, registry_root, family) if main else None
    splits = _data(name, family, cfg, data_dir, ckpt, ctx)
    say(f"  data: {splits.dataset.source}; splits {splits.dataset.split_sizes}; "
        f"sha256 {splits.dataset.fingerprint[:12]}", flush=True)
    t = stage("data", t0)
    baselines = family.baselines(cfg, splits) if main else {}  # for the gate: rank 0's business
    if main:
        check_baseline_names(name, cfg.gate.criteria, baselines)
    for b, vals in baselines.items():
        print(f"  baseline {b}: " + ", ".join(f"{k} {v:.4f}" for k, v in vals.items()), flush=True)
    t = stage("baselines", t)

    seed_everything(cfg.train.seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    model = family.build_model(cfg, splits)
    n_params = sum(p.numel() for p in model.parameters())
    say(f"  model: {n_params:,} parameters", flush=True)
    staging = registry.staging_dir(registry_root, name) if main else None
    try:
        trained = train(family, model, cfg, splits, log_path=staging / "train_log.jsonl" if main else None,
                        plots_dir=staging / "plots" if main else None, label=name, ctx=ctx, checkpointing=ckpt)
        if not main:
            return None
        t = stage("train", t)
        assets = family.write_assets(model, cfg, splits, staging)
        exported = export_all(family.export_graphs(model, cfg, splits), cfg.export, staging, threads=cfg.train.threads)
        t = stage("export", t)

        version = unique_version(registry_root, name)
        manifest = Manifest(
            name=name,
            version=version,
            task=family.task,
            git_commit=commit,
            library_versions=library_versions(),
            description=family.description(cfg, preset),
            labels=splits.labels,
            graphs=exported.graphs,
            preprocessing=assets.preprocessing,
            postprocessing=assets.postprocessing,
            generation=assets.generation,
            metrics={},
            baseline_metrics=baselines,
            headline_metric=family.headline_metric,
            gate=GateResult(passed=False, criteria=cfg.gate.criteria, reasons=["pending"]),
            parity=exported.parity,
            exporters=exported.exporters,
            files=[],
            dataset=splits.dataset,
            training=TrainingInfo(
                preset=preset,
                command=command,
                config=cfg.model_dump(mode="json"),
                duration_s=round(trained.duration_s, 1),
                device=_device_name(cfg.train.device, ctx),
                num_parameters=n_params,
                world_size=ctx.world_size,
            ),
            reference_profile=ReferenceProfile(n_samples=0, features={}),
        )
        # Evaluate the exported graphs through the serving runtime (torch-free code path).
        evaluations: dict[str, Evaluation] = {}
        for variant in manifest.variants():
            runtime = create_runtime(manifest, staging, cpu_sessions(cfg.train.threads, variant))
            runtime.load()
            evaluations[variant] = family.evaluate(runtime, cfg, splits)
        metrics = {v: dict(e.metrics) for v, e in evaluations.items()}
        if "int8" in evaluations:
            metrics["int8"]["agreement_vs_fp32"] = agreement(evaluations["int8"].predictions, evaluations["fp32"].predictions)
        manifest.metrics = metrics
        manifest.reference_profile = family.reference_profile(evaluations["fp32"], splits)
        family.plots(evaluations["fp32"], splits, staging / "plots")
        manifest.gate = evaluate_gate(name, cfg.gate.criteria, metrics["fp32"], baselines, exported.parity)
        t = stage("evaluate", t)
        plot_files = sorted(p.relative_to(staging).as_posix() for p in (staging / "plots").glob("*.png"))
        manifest.training.duration_s = round(time.perf_counter() - t0, 1)
        write_model_card(staging / "MODEL_CARD.md", manifest, family.card_notes(cfg, splits), plot_files)
        final = registry.publish(registry_root, staging, manifest, servable=manifest.gate.passed and promote)
    except BaseException:
        if staging is not None:
            registry.discard(staging)
            _remove_if_empty(registry_root / name)
        raise
    if ckpt is not None:  # published (servable or not): nothing left to resume
        checkpoint.finish(ckpt.path.parent, cfg, splits.dataset.fingerprint, version)
    seconds = time.perf_counter() - t0
    result = ModelResult(name, version, final, seconds, family.headline_metric, metrics, baselines, manifest.gate, stages)
    hm = family.headline_metric
    print(f"  test {hm}: fp32 {metrics['fp32'][hm]:.4f}"
          + (f", int8 {metrics['int8'][hm]:.4f} (agreement {metrics['int8']['agreement_vs_fp32']:.4f})" if "int8" in metrics else ""))
    for line in manifest.gate.reasons:
        print(f"  gate {line}")
    print(f"  {'registered' if manifest.gate.passed else 'NOT servable'}: {final}  "
          f"({seconds:.0f} s: " + ", ".join(f"{k} {v:.0f} s" for k, v in stages.items()) + ")", flush=True)
    if not manifest.gate.passed:
        raise GateFailed(result)
    return result


def _published_before(name: str, ckpt: Checkpointing, cfg: ModelConfig, registry_root: Path) -> str | None:
    """The version a finished run of this recipe published, if it is still in the registry."""
    version = checkpoint.published(ckpt.path.parent, cfg)
    if version is not None and not (registry_root / name / version / registry.MANIFEST_FILE).is_file():
        print(f"  [{name}] --resume: the run had published {version}, no longer in {registry_root}; "
              "training again", flush=True)
        return None
    return version


def _already_published(name: str, version: str, registry_root: Path, family: Family) -> ModelResult:
    """Report what the run published (GateFailed if that version failed its gate)."""
    path = registry_root / name / version
    manifest = Manifest.load(path / registry.MANIFEST_FILE)
    print(f"  [{name}] --resume: this run already published {name}/{version}; not training it again", flush=True)
    result = ModelResult(name, version, path, 0.0, family.headline_metric, manifest.metrics,
                         manifest.baseline_metrics, manifest.gate)
    if not manifest.gate.passed:
        raise GateFailed(result)
    return result


def _data(name: str, family: Family, cfg: ModelConfig, data_dir: Path, ckpt: Checkpointing | None,
          ctx: DistContext):
    """The prepared splits: rank 0 prepares them (or, resuming, reloads the run's own) and sends
    them to the other ranks, so every rank trains on the same data with the same tokenizer."""
    splits = None
    if ctx.is_main:
        if ckpt is not None and ckpt.resume:
            splits = checkpoint.load_data(ckpt.path.parent, cfg, name)
            if splits is not None:
                print(f"  [{name}] --resume: prepared data reloaded from {ckpt.path.parent}", flush=True)
        if splits is None:
            splits = family.prepare_data(cfg, data_dir)
            if ckpt is not None:  # kept beside the first checkpoint, for --resume
                blob = checkpoint.data_blob(splits, cfg)
                ckpt.before_first_save = partial(checkpoint.save_data, ckpt.path.parent, blob)
    return ctx.broadcast(splits)


def _device_name(choice: str, ctx: DistContext = SINGLE) -> str:
    device = resolve_device(choice)
    one = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    return f"{ctx.world_size} x {one}" if ctx.enabled else one


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()  # only succeeds when nothing else (other versions, LATEST) is there
    except OSError:
        pass
