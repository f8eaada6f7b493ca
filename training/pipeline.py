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
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from modelkit import registry
from modelkit.manifest import GateResult, Manifest, ReferenceProfile, TrainingInfo
from modelkit.onnx_session import SessionSettings
from modelkit.runtimes import create_runtime

from .config import ModelConfig
from .export import export_all
from .family import Evaluation, Family
from .gate import check_baseline_names, evaluate_gate
from .model_card import write_model_card
from .trainer import resolve_device, seed_everything, train

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
) -> ModelResult:
    """Train, export, evaluate, gate and publish one model; returns its summary.

    ``promote=False`` publishes a version that passed its gate without moving LATEST (a candidate to
    roll out first: ``python -m training promote`` moves LATEST later)."""
    t0 = time.perf_counter()
    stages: dict[str, float] = {}

    def stage(label: str, since: float) -> float:
        now = time.perf_counter()
        stages[label] = round(now - since, 2)
        return now

    commit = git_commit()  # the code that trains, not whatever is checked out when it finishes
    print(f"\n=== {name} ({family.task}, preset {preset}) ===", flush=True)
    splits = family.prepare_data(cfg, data_dir)
    print(f"  data: {splits.dataset.source}; splits {splits.dataset.split_sizes}; "
          f"sha256 {splits.dataset.fingerprint[:12]}", flush=True)
    t = stage("data", t0)
    baselines = family.baselines(cfg, splits)
    check_baseline_names(name, cfg.gate.criteria, baselines)
    for b, vals in baselines.items():
        print(f"  baseline {b}: " + ", ".join(f"{k} {v:.4f}" for k, v in vals.items()), flush=True)
    t = stage("baselines", t)

    seed_everything(cfg.train.seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    model = family.build_model(cfg, splits)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"  model: {n_params:,} parameters", flush=True)
    staging = registry.staging_dir(registry_root, name)
    try:
        trained = train(family, model, cfg, splits, log_path=staging / "train_log.jsonl",
                        plots_dir=staging / "plots", label=name)
        t = stage("train", t)
        assets = family.write_assets(model, cfg, splits, staging)
        exported = export_all(family.export_graphs(model, cfg, splits), cfg.export, staging)
        t = stage("export", t)

        version = unique_version(registry_root, name)
        manifest = Manifest(
            name=name,
            version=version,
            task=family.task,
            git_commit=commit,
            library_versions=library_versions(),
            description=f"{family.__class__.__name__} trained from scratch with the {preset} preset.",
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
                device=_device_name(cfg.train.device),
                num_parameters=n_params,
            ),
            reference_profile=ReferenceProfile(n_samples=0, features={}),
        )
        # Evaluate the exported graphs through the serving runtime (torch-free code path).
        evaluations: dict[str, Evaluation] = {}
        for variant in manifest.variants():
            runtime = create_runtime(manifest, staging, SessionSettings(provider="cpu", variant=variant))
            runtime.load()
            evaluations[variant] = family.evaluate(runtime, cfg, splits)
        metrics = {v: dict(e.metrics) for v, e in evaluations.items()}
        if "int8" in evaluations:
            metrics["int8"]["agreement_vs_fp32"] = agreement(evaluations["int8"].predictions, evaluations["fp32"].predictions)
        manifest.metrics = metrics
        manifest.reference_profile = family.reference_profile(evaluations["fp32"], splits)
        plots = family.plots(evaluations["fp32"], splits, staging / "plots")
        manifest.gate = evaluate_gate(name, cfg.gate.criteria, metrics["fp32"], baselines, exported.parity)
        t = stage("evaluate", t)
        plot_files = sorted(p.relative_to(staging).as_posix() for p in (staging / "plots").glob("*.png"))
        manifest.training.duration_s = round(time.perf_counter() - t0, 1)
        write_model_card(staging / "MODEL_CARD.md", manifest, family.card_notes(cfg, splits), plot_files)
        final = registry.publish(registry_root, staging, manifest, servable=manifest.gate.passed and promote)
    except BaseException:
        registry.discard(staging)
        _remove_if_empty(registry_root / name)
        raise
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


def _device_name(choice: str) -> str:
    device = resolve_device(choice)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()  # only succeeds when nothing else (other versions, LATEST) is there
    except OSError:
        pass
