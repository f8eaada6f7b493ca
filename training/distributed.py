"""Process-group plumbing for ``torchrun --nproc-per-node N -m training train``.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR``/``MASTER_PORT``;
:func:`init_from_env` opens the group (``gloo`` on CPU, ``nccl`` on GPU) and returns a
:class:`DistContext`. A plain ``python -m training`` gets a world of one and no group, so
single-process training never touches ``torch.distributed``.

The recipe is the global batch: every rank builds the same global batch (same seed, same
sampler) and keeps its own contiguous share of the rows (:func:`shard_rows`), so one process
and N processes take the same optimizer steps on the same examples.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

# Rank 0 alone exports, evaluates and publishes a model while the others wait at their next
# collective (the next model's data preparation): a translator's evaluation takes minutes.
GROUP_TIMEOUT = timedelta(minutes=90)


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: no process group (one process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def device(self, base: torch.device) -> torch.device:
        """This rank's device: ``cuda:LOCAL_RANK`` on GPU, else ``base``."""
        return torch.device("cuda", self.local_rank) if base.type == "cuda" and self.enabled else base

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sum of ``values`` over the ranks (float64)."""
        return self._reduce(values, device, "SUM")

    def max(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise maximum of ``values`` over the ranks (float64)."""
        return self._reduce(values, device, "MAX")

    def _reduce(self, values: list[float], device: torch.device, op: str) -> list[float]:
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t, op=getattr(torch.distributed.ReduceOp, op))
        return t.tolist()


SINGLE = DistContext()


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def uses_cuda(configs: dict) -> bool:
    """Whether the selected models train on CUDA; one process group serves them all, so their
    devices must agree (gloo or nccl)."""
    from .config import ConfigError
    from .trainer import resolve_device

    kinds = {name: resolve_device(cfg.train.device).type for name, cfg in configs.items()}
    if len(set(kinds.values())) > 1:
        raise ConfigError(f"train.device: under torchrun every selected model must use the same kind of device, got {kinds}")
    return "cuda" in kinds.values()


def init_from_env(use_cuda: bool) -> DistContext:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1, else a world of one."""
    world = env_world_size()
    if world <= 1:
        return SINGLE
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=GROUP_TIMEOUT)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, backend=backend)


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def shard_rows(n: int, ctx: DistContext) -> tuple[int, int]:
    """[start, stop) of this rank's contiguous share of ``n`` rows (the first ``n % world`` get one more)."""
    base, extra = divmod(n, ctx.world_size)
    start = ctx.rank * base + min(ctx.rank, extra)
    return start, start + base + (ctx.rank < extra)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)
