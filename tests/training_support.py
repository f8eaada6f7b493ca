"""Helpers for tests that run ``python -m training train`` / ``torchrun`` as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from modelkit.manifest import Manifest
from modelkit.registry import MANIFEST_FILE
from training.trainer import KILL_AT_STEP_ENV

ROOT = Path(__file__).resolve().parents[1]
PYTHON = Path(sys.executable)
TORCHRUN = PYTHON.parent / "torchrun"


def share_prepared_data(models: list[str], sets: list[str], data_dir: Path, *checkpoint_dirs: Path) -> None:
    """Prepare each model's smoke data once and leave it where ``--resume`` picks it up in every
    ``checkpoint_dir``: the tokenizer trainers are not deterministic, so runs compared step by
    step must share one prepared dataset (a resumed run does the same with its own)."""
    from training import checkpoint
    from training.cli import resolve_configs
    from training.families import available_models

    configs = resolve_configs(models, "smoke", sets=sets)
    for name, cfg in configs.items():
        splits = available_models()[name].prepare_data(cfg, data_dir)
        blob = checkpoint.data_blob(splits, cfg)
        for folder in checkpoint_dirs:
            checkpoint.save_data(folder / name, blob)


def train_cmd(models: list[str], registry: Path, checkpoints: Path, data_dir: Path, sets: list[str],
              *, nproc: int = 1, resume: bool = True) -> list[str]:
    launcher = [str(TORCHRUN), "--standalone", f"--nproc-per-node={nproc}"] if nproc > 1 else [str(PYTHON)]
    cmd = [*launcher, "-m", "training", "train", "--preset", "smoke", "--models", ",".join(models),
           "--registry", str(registry), "--checkpoint-dir", str(checkpoints), "--data-dir", str(data_dir)]
    for s in sets:
        cmd += ["--set", s]
    return cmd + (["--resume"] if resume else [])


def run(cmd: list[str], *, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != KILL_AT_STEP_ENV}
    full_env.update({"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})})
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)


def versions(registry: Path, name: str) -> list[Path]:
    """Published version folders of ``name`` (hidden staging folders excluded)."""
    folder = registry / name
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) if folder.is_dir() else []


def only_version(registry: Path, name: str) -> tuple[Path, Manifest]:
    (version,) = versions(registry, name)
    return version, Manifest.load(version / MANIFEST_FILE)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]
