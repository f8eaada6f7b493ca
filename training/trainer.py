"""Generic trainer: AdamW, warmup + linear/cosine decay, gradient clipping, early stopping.

The family supplies batches, the loss and validation metrics; the trainer keeps the best
checkpoint (by the monitored validation metric, higher is better), logs one JSONL line per
epoch and draws the curves.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

from .config import ModelConfig
from .family import Family, Splits
from .plots import curves_plot


@dataclass
class TrainResult:
    best_epoch: int
    best_metric: float
    monitor: str
    epochs_run: int
    stopped_early: bool
    duration_s: float
    history: list[dict] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        from .config import ConfigError

        raise ConfigError("train.device=cuda but torch sees no GPU (use auto or cpu)")
    return torch.device("cuda" if choice != "cpu" and torch.cuda.is_available() else "cpu")


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's parameters are (validate() moves its batches there)."""
    return next(model.parameters()).device


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and norm weights."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def budget_schedule(kind: str, warmup: int, total: int, budget_s: float, t_start: float):
    """LambdaLR factor: linear warmup over ``warmup`` steps, then linear or cosine decay over the
    progress max(step / total, elapsed / budget), so a slow machine still anneals to zero in time."""

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        progress = max(step / max(1, total), (time.perf_counter() - t_start) / budget_s)
        start = warmup / max(1, total)
        frac = min(1.0, max(0.0, (progress - start) / max(1e-9, 1 - start)))
        return 0.5 * (1 + math.cos(math.pi * frac)) if kind == "cosine" else 1.0 - frac

    return factor


def steps_per_epoch(n_train: int, cfg: ModelConfig) -> int:
    steps = math.ceil(n_train / cfg.train.batch_size)
    return min(steps, cfg.train.max_steps_per_epoch) if cfg.train.max_steps_per_epoch else steps


def train(
    family: Family,
    model: torch.nn.Module,
    cfg: ModelConfig,
    splits: Splits,
    *,
    log_path: Path,
    plots_dir: Path,
    label: str = "",
) -> TrainResult:
    """Train ``model`` in place; on return it holds the best validation checkpoint."""
    tc = cfg.train
    monitor = tc.monitor or family.headline_metric
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = resolve_device(tc.device)
    model.to(device)
    per_epoch = steps_per_epoch(len(splits.train), cfg)
    total = per_epoch * tc.epochs
    optimizer = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr)
    warmup = int(tc.warmup_ratio * total)
    budget_s = tc.max_minutes * 60 if tc.max_minutes else None
    t_start = time.perf_counter()
    if budget_s is None:
        make_schedule = get_cosine_schedule_with_warmup if tc.schedule == "cosine" else get_linear_schedule_with_warmup
        scheduler = make_schedule(optimizer, warmup, total)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, budget_schedule(tc.schedule, warmup, total, budget_s, t_start))

    log_path.parent.mkdir(parents=True, exist_ok=True)
    history: list[dict] = []
    best_metric, best_epoch, best_state = -math.inf, 0, None
    bad_epochs, stopped_early, out_of_time = 0, False, False
    with open(log_path, "w", encoding="utf-8") as log:
        for epoch in range(1, tc.epochs + 1):
            t_epoch = time.perf_counter()
            model.train()
            losses = []
            bar = tqdm(total=per_epoch, desc=f"{label} epoch {epoch}/{tc.epochs}", disable=not tc.progress, leave=False)
            for step, batch in enumerate(family.batches(cfg, splits, "train", shuffle=True, seed=tc.seed + epoch)):
                if step >= per_epoch:
                    break
                if budget_s is not None and time.perf_counter() - t_start >= budget_s:
                    out_of_time = True
                    break
                batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
                loss = family.loss(model, batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{label}: loss is {loss.item()} at epoch {epoch} step {step}; lower train.lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                optimizer.step()
                scheduler.step()
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", best=f"{max(best_metric, 0):.4f}")
            bar.close()
            val = family.validate(model, cfg, splits)
            if monitor not in val:
                from .config import ConfigError

                raise ConfigError(f"{label}.train.monitor: {monitor!r} not among validation metrics {sorted(val)}")
            record = {
                "epoch": epoch,
                "train_loss": float(np.mean(losses)) if losses else float("nan"),
                **{f"val_{k}" if not k.startswith("val_") else k: float(v) for k, v in val.items()},
                "lr": scheduler.get_last_lr()[0],
                "steps": len(losses),
                "seconds": round(time.perf_counter() - t_epoch, 2),
            }
            improved = val[monitor] > best_metric
            if improved:
                best_metric, best_epoch = val[monitor], epoch
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                bad_epochs = 0
            else:
                bad_epochs += 1
            record["best"] = improved
            if out_of_time:
                record["time_budget_reached"] = True
            history.append(record)
            log.write(json.dumps(record) + "\n")
            log.flush()
            print(
                f"  [{label}] epoch {epoch}: train_loss {record['train_loss']:.4f}  val {monitor} {val[monitor]:.4f}"
                f"{'  *best' if improved else ''}  ({record['seconds']:.0f} s)",
                flush=True,
            )
            if out_of_time:
                print(f"  [{label}] time budget of {tc.max_minutes} min reached after epoch {epoch}", flush=True)
                break
            if bad_epochs >= tc.patience and epoch < tc.epochs:
                stopped_early = True
                print(f"  [{label}] early stop: no validation improvement for {bad_epochs} epoch(s)", flush=True)
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.to("cpu").eval()  # export and parity checks run on CPU
    curves_plot(history, monitor, plots_dir)
    return TrainResult(
        best_epoch=best_epoch,
        best_metric=float(best_metric),
        monitor=monitor,
        epochs_run=len(history),
        stopped_early=stopped_early or out_of_time,
        duration_s=time.perf_counter() - t_start,
        history=history,
    )
