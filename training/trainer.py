"""Generic trainer: AdamW, warmup + linear/cosine decay, gradient clipping, early stopping.

The family supplies batches, the loss and validation metrics; the trainer keeps the best
weights (by the monitored validation metric, higher is better), logs one JSONL line per epoch
(``train_log.jsonl``) and one per optimizer step (``train_steps.jsonl``) and draws the curves.

Distributed (torchrun): DistributedDataParallel over each rank's share of every global batch
(training/distributed.py); validation rows are split over the ranks and the metrics computed
once from all of them. Resumable: with ``checkpointing`` a checkpoint (training/checkpoint.py)
is written every ``train.checkpoint_every`` steps and after every epoch, and a resumed run
replays the epoch's batch stream up to the saved data position, so it takes the same steps.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

from . import checkpoint
from .config import ConfigError, ModelConfig
from .distributed import SINGLE, DistContext, shard_rows
from .family import Family, Splits
from .plots import curves_plot

STEPS_LOG = "train_steps.jsonl"  # per optimizer step: global batch loss, learning rate, seconds
# fault drill for tests: SIGKILL this process right after optimizer step N (and its checkpoint, if one is due)
KILL_AT_STEP_ENV = "MODELSERVE_TRAIN_KILL_AT_STEP"


@dataclass
class TrainResult:
    best_epoch: int
    best_metric: float
    monitor: str
    epochs_run: int
    stopped_early: bool
    duration_s: float
    history: list[dict] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)  # one record per optimizer step (global batch loss)
    resumed_at_step: int | None = None  # the checkpoint's step when the run was resumed


@dataclass
class Checkpointing:
    """Where the run's checkpoint lives and whether to continue from it."""

    path: Path
    resume: bool = False
    # called on rank 0 before the first checkpoint is written (the pipeline saves the prepared data)
    before_first_save: Callable[[], None] | None = None


@dataclass
class _State:
    """Everything of a run besides model, optimizer, scheduler and RNG (checkpointed)."""

    epoch: int = 1  # the epoch in progress (1-based)
    step_in_epoch: int = 0  # batches of it already trained on: the data position
    global_step: int = 0
    elapsed_s: float = 0.0  # training seconds before this process (rank 0's clock)
    best_metric: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    epoch_losses: list = field(default_factory=list)
    history: list = field(default_factory=list)
    steps: list = field(default_factory=list)
    stopped_early: bool = False
    out_of_time: bool = False
    finished: bool = False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
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


def budget_schedule(kind: str, warmup: int, total: int, budget_s: float, t_start: float,
                    elapsed: Callable[[], float] | None = None):
    """LambdaLR factor: linear warmup over ``warmup`` steps, then linear or cosine decay over the
    progress max(step / total, elapsed / budget), so a slow machine still anneals to zero in time.
    ``elapsed`` (seconds trained; default: since ``t_start``) is what distributed and resumed runs pass."""

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        spent = elapsed() if elapsed is not None else time.perf_counter() - t_start
        progress = max(step / max(1, total), spent / budget_s)
        start = warmup / max(1, total)
        frac = min(1.0, max(0.0, (progress - start) / max(1e-9, 1 - start)))
        return 0.5 * (1 + math.cos(math.pi * frac)) if kind == "cosine" else 1.0 - frac

    return factor


class WeightAverage:
    """Exponential moving average of a model's floating-point weights and buffers.

    The decay ramps up as min(decay, (1 + n) / (10 + n)) over the first updates, so the average
    does not drag the random initialisation along; every rank of a DDP run holds the same one.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.dtype.is_floating_point}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        state = model.state_dict()
        for k, avg in self.shadow.items():
            avg.lerp_(state[k].detach(), 1 - d)

    @contextlib.contextmanager
    def swapped_in(self, model: torch.nn.Module):
        """The model holds the averaged weights inside the block, its own ones again after it."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items() if k in self.shadow}
        model.load_state_dict(self.shadow, strict=False)
        try:
            yield
        finally:
            model.load_state_dict(own, strict=False)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "shadow": {k: v.cpu() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.updates = state["updates"]
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)


def steps_per_epoch(n_train: int, cfg: ModelConfig) -> int:
    steps = math.ceil(n_train / cfg.train.batch_size)
    return min(steps, cfg.train.max_steps_per_epoch) if cfg.train.max_steps_per_epoch else steps


class _Clock:
    """Seconds trained, counting earlier runs of a resumed job; ``sync`` agrees on one value
    across ranks (the time budget must stop every rank at the same step)."""

    def __init__(self, ctx: DistContext, device: torch.device, prior: float):
        self.ctx, self.device, self.prior = ctx, device, prior
        self.t0 = time.perf_counter()
        self.synced = prior

    def local(self) -> float:
        return self.prior + time.perf_counter() - self.t0

    def sync(self) -> float:
        self.synced = self.ctx.max([self.local()], self.device)[0]
        return self.synced


def shard_batch(family: Family, batch: dict, ctx: DistContext) -> tuple[dict, float]:
    """This rank's rows of a global batch and the factor that turns its mean loss into its share
    of the global mean (world size x its weight / the batch's weight), so that DDP's gradient
    average equals the one-process gradient of the whole batch."""
    if not ctx.enabled:
        return batch, 1.0
    n = len(next(v for v in batch.values() if torch.is_tensor(v)))
    start, stop = shard_rows(n, ctx)
    if start == stop:  # fewer rows than ranks: run one row with no weight (every rank must step)
        start, stop, empty = 0, 1, True
    else:
        empty = False
    local = {k: v[start:stop] if torch.is_tensor(v) else v for k, v in batch.items()}
    if empty:
        return local, 0.0
    return local, ctx.world_size * family.batch_weight(local) / max(family.batch_weight(batch), 1e-12)


def validate(family: Family, model: torch.nn.Module, cfg: ModelConfig, splits: Splits, ctx: DistContext) -> dict:
    """Validation metrics; under torchrun each rank runs its share of the rows, rank 0 computes
    the metrics from all of them and every rank gets the same numbers (early stopping agrees)."""
    if not ctx.enabled:
        return family.validate(model, cfg, splits)
    start, stop = shard_rows(len(splits.val), ctx)
    parts = ctx.gather(family.val_outputs(model, cfg, splits, np.arange(start, stop)))
    metrics = family.val_metrics([o for part in parts for o in part], cfg, splits) if ctx.is_main else None
    return ctx.broadcast(metrics)


def _make_scheduler(optimizer, tc, warmup: int, total: int, clock: _Clock):
    if tc.max_minutes is None:
        make = get_cosine_schedule_with_warmup if tc.schedule == "cosine" else get_linear_schedule_with_warmup
        return make(optimizer, warmup, total)
    factor = budget_schedule(tc.schedule, warmup, total, tc.max_minutes * 60, 0.0, elapsed=lambda: clock.synced)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _read_checkpoint(ck: Checkpointing, cfg: ModelConfig, splits: Splits, label: str) -> dict | None:
    if not ck.path.is_file():
        print(f"  [{label}] --resume: no checkpoint at {ck.path}; starting from the beginning", flush=True)
        return None
    payload = checkpoint.load(ck.path)
    checkpoint.check_recipe(json.loads(payload["recipe"]), checkpoint.recipe(cfg, splits.dataset.fingerprint),
                            label, ck.path)
    st = payload["state"]
    print(f"  [{label}] resuming from {ck.path}: step {st['global_step']}, epoch {st['epoch']} "
          f"after {st['step_in_epoch']} batches" + (" (training had finished)" if st["finished"] else ""), flush=True)
    return payload


class _Run:
    """One model's training loop: the objects it steps and what it checkpoints."""

    def __init__(self, family: Family, model: torch.nn.Module, cfg: ModelConfig, splits: Splits, ctx: DistContext,
                 checkpointing: Checkpointing | None, label: str, payload: dict | None):
        self.family, self.model, self.cfg, self.splits, self.ctx = family, model, cfg, splits, ctx
        self.checkpointing, self.label = checkpointing, label
        self.tc = tc = cfg.train
        self.monitor = tc.monitor or family.headline_metric
        self.say = print if ctx.is_main else (lambda *a, **k: None)
        self.device = ctx.device(resolve_device(tc.device))
        self.per_epoch = steps_per_epoch(len(splits.train), cfg)
        total = self.per_epoch * tc.epochs
        self.budget_s = tc.max_minutes * 60 if tc.max_minutes else None
        if payload is not None:
            model.load_state_dict(payload["model"])
        model.to(self.device)
        # fused: one kernel over all parameters instead of per-tensor foreach ops; measured on this 2-core CPU
        # (1 thread, 11.8M parameters) 7.3 ms per step against 68.7 ms: the step of an embedding-heavy model
        self.optimizer = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr,
                                           fused=self.device.type in ("cpu", "cuda"))
        self.state = _State(**payload["state"]) if payload is not None else _State()
        self.clock = _Clock(ctx, self.device, self.state.elapsed_s)
        self.scheduler = _make_scheduler(self.optimizer, tc, int(tc.warmup_ratio * total), total, self.clock)
        self.best_state = None
        self.ema = WeightAverage(model, tc.ema_decay) if tc.ema_decay else None
        if payload is not None:
            self._restore(payload)
        elif ctx.rank:
            seed_everything(tc.seed + 1000 * ctx.rank)  # own dropout stream; batches follow tc.seed on every rank
        self.net = model
        if ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel

            # no BatchNorm here: buffers are constants, nothing to broadcast every step
            self.net = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                               forward_sync_buffers=False)

    def _restore(self, payload: dict) -> None:
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.best_state = payload["best"]
        if self.ema is not None:
            self.ema.load_state_dict(payload["ema"])
        rngs, ctx = payload["rng"], self.ctx
        if len(rngs) == ctx.world_size:
            checkpoint.set_rng_state(rngs[ctx.rank])
        else:  # resumed with another process count: rank 0 continues, the others start new streams
            self.say(f"  [{self.label}] checkpoint written by {len(rngs)} process(es), resumed by {ctx.world_size}: "
                     "dropout streams of ranks > 0 start afresh", flush=True)
            checkpoint.set_rng_state(rngs[0])
            if ctx.rank:
                seed_everything(self.tc.seed + 1000 * ctx.rank + self.state.global_step)

    def save_checkpoint(self) -> None:
        """Every rank sends its RNG states; rank 0 writes the checkpoint."""
        ck = self.checkpointing
        if ck is None:
            return
        rngs = self.ctx.gather(checkpoint.rng_state())
        if not self.ctx.is_main:
            return
        if ck.before_first_save is not None:
            ck.before_first_save()
            ck.before_first_save = None
        self.state.elapsed_s = self.clock.local()
        checkpoint.save(ck.path, {
            "recipe": checkpoint.recipe_json(checkpoint.recipe(self.cfg, self.splits.dataset.fingerprint)),
            "world_size": self.ctx.world_size,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rngs,
            "state": asdict(self.state),
            "best": self.best_state,
            "ema": self.ema.state_dict() if self.ema is not None else None,
        })

    def train_epoch(self, kill_at: int) -> None:
        """The optimizer steps of the current epoch from the data position on."""
        st, tc, ctx, epoch = self.state, self.tc, self.ctx, self.state.epoch
        self.net.train()
        bar = tqdm(total=self.per_epoch, initial=st.step_in_epoch, desc=f"{self.label} epoch {epoch}/{tc.epochs}",
                   disable=not (tc.progress and ctx.is_main), leave=False)
        for step, batch in enumerate(self.family.batches(self.cfg, self.splits, "train", shuffle=True, seed=tc.seed + epoch)):
            if step >= self.per_epoch:
                break
            if step < st.step_in_epoch:
                continue  # resumed mid-epoch: the same stream, replayed up to the data position
            if self.budget_s is not None and self.clock.sync() >= self.budget_s:
                st.out_of_time = True
                break
            local, scale = shard_batch(self.family, batch, ctx)
            local = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in local.items()}
            loss = self.family.loss(self.net, local)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{self.label}: loss is {loss.item()} at epoch {epoch} step {step}; lower train.lr")
            lr = self.optimizer.param_groups[0]["lr"]
            self.optimizer.zero_grad(set_to_none=True)
            (loss * scale if scale != 1.0 else loss).backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update(self.model)
            # the global batch's mean loss: the ranks' weighted shares, summed
            step_loss = ctx.sum([loss.item() * scale], self.device)[0] / ctx.world_size if ctx.enabled else loss.item()
            st.epoch_losses.append(step_loss)
            st.global_step += 1
            st.step_in_epoch = step + 1
            st.steps.append({"step": st.global_step, "epoch": epoch, "loss": step_loss, "lr": lr,
                             "seconds": round(self.clock.local(), 4)})
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(st.epoch_losses[-50:]):.4f}", best=f"{max(st.best_metric, 0):.4f}")
            if tc.checkpoint_every and st.global_step % tc.checkpoint_every == 0:
                self.save_checkpoint()
            if st.global_step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # fault drill (tests): die as a preempted pod would
        bar.close()

    def _stop_out_of_time(self, last_epoch: int) -> None:
        self.say(f"  [{self.label}] time budget of {self.tc.max_minutes} min reached after epoch {last_epoch}", flush=True)
        self.state.finished = True

    def end_epoch(self, seconds: float) -> dict | None:
        """Validate, keep the best weights, decide whether to stop; the epoch's log record (None when
        the time budget ran out before the epoch's first step: nothing new to validate or log)."""
        st, tc, monitor, epoch = self.state, self.tc, self.monitor, self.state.epoch
        if st.out_of_time and st.step_in_epoch == 0 and st.history:
            self._stop_out_of_time(epoch - 1)
            return None
        with self.ema.swapped_in(self.model) if self.ema is not None else contextlib.nullcontext():
            val = validate(self.family, self.model, self.cfg, self.splits, self.ctx)
            weights = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        if monitor not in val:
            raise ConfigError(f"{self.label}.train.monitor: {monitor!r} not among validation metrics {sorted(val)}")
        record = {
            "epoch": epoch,
            "train_loss": float(np.mean(st.epoch_losses)) if st.epoch_losses else float("nan"),
            **{f"val_{k}" if not k.startswith("val_") else k: float(v) for k, v in val.items()},
            "lr": self.scheduler.get_last_lr()[0],
            "steps": len(st.epoch_losses),
            "seconds": round(seconds, 2),
        }
        improved = val[monitor] > st.best_metric
        if improved:
            st.best_metric, st.best_epoch, st.bad_epochs = val[monitor], epoch, 0
            self.best_state = weights
        else:
            st.bad_epochs += 1
        record["best"] = improved
        if st.out_of_time:
            record["time_budget_reached"] = True
        st.history.append(record)
        self.say(f"  [{self.label}] epoch {epoch}: train_loss {record['train_loss']:.4f}  val {monitor} "
                 f"{val[monitor]:.4f}{'  *best' if improved else ''}  ({record['seconds']:.0f} s)", flush=True)
        st.epoch, st.step_in_epoch, st.epoch_losses = epoch + 1, 0, []
        if st.out_of_time:
            self._stop_out_of_time(epoch)
        elif st.bad_epochs >= tc.patience and epoch < tc.epochs:
            st.stopped_early = st.finished = True
            self.say(f"  [{self.label}] early stop: no validation improvement for {st.bad_epochs} epoch(s)", flush=True)
        elif epoch >= tc.epochs:
            st.finished = True
        return record


def train(
    family: Family,
    model: torch.nn.Module,
    cfg: ModelConfig,
    splits: Splits,
    *,
    log_path: Path | None,
    plots_dir: Path | None,
    label: str = "",
    ctx: DistContext = SINGLE,
    checkpointing: Checkpointing | None = None,
) -> TrainResult:
    """Train ``model`` in place; on return it holds the best validation weights (on CPU).

    Under torchrun (``ctx``) the model is wrapped in DistributedDataParallel and every rank
    trains on its share of each global batch; logs, plots and checkpoints are rank 0's
    (``log_path`` and ``plots_dir`` may be None on the other ranks).
    """
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    payload = None
    if checkpointing is not None and checkpointing.resume:
        payload = ctx.broadcast(_read_checkpoint(checkpointing, cfg, splits, label) if ctx.is_main else None)
    run = _Run(family, model, cfg, splits, ctx, checkpointing, label, payload)
    state = run.state
    kill_at = int(os.environ.get(KILL_AT_STEP_ENV, "0") or 0)
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") if log_path is not None else contextlib.nullcontext() as log:
        for record in state.history if log is not None else []:
            log.write(json.dumps(record) + "\n")
        while not state.finished:
            t_epoch = time.perf_counter()
            run.train_epoch(kill_at)
            record = run.end_epoch(time.perf_counter() - t_epoch)
            if record is not None and log is not None:
                log.write(json.dumps(record) + "\n")
                log.flush()
            run.save_checkpoint()
    del run.net  # drop DDP's gradient hooks before export
    if run.best_state is not None:
        model.load_state_dict(run.best_state)
    model.to("cpu").eval()  # export and parity checks run on CPU
    if plots_dir is not None:
        curves_plot(state.history, run.monitor, plots_dir)
    if log_path is not None:
        with open(log_path.with_name(STEPS_LOG), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(s) + "\n" for s in state.steps)
    return TrainResult(
        best_epoch=state.best_epoch,
        best_metric=float(state.best_metric),
        monitor=run.monitor,
        epochs_run=len(state.history),
        stopped_early=state.stopped_early or state.out_of_time,
        duration_s=run.clock.local(),
        history=state.history,
        steps=state.steps,
        resumed_at_step=payload["state"]["global_step"] if payload is not None else None,
    )
