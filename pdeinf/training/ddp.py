"""Data-parallel training with `torchrun` (DistributedDataParallel).

`pdeinf.training.train.train` detects a torchrun launch from the environment (`WORLD_SIZE > 1`)
and then: initialises the process group (gloo on CPU, nccl on GPU), wraps the model in DDP,
and gives each rank a disjoint share of every global mini-batch (same shuffle on every rank,
derived from (seed, epoch)). Each rank's loss is `sum(local SMSE) * world / global batch`, so
DDP's gradient average equals the gradient of the global batch mean: the result equals a
one-process run with the same global batch (up to float summation order). Only rank 0 writes
checkpoints, the resume state and the curves.

Paper profile on two GPUs (the paper trained data-parallel on two A100s):

    torchrun --standalone --nproc_per_node 2 -m pdeinf train --pde CE --model unet --seed 10 --profile paper

On CPU (gloo), e.g. to check the mechanics:

    torchrun --standalone --nproc_per_node 2 -m pdeinf train --pde CE --model unet --seed 10 --profile smoke

Interrupting a torchrun job and relaunching the same command resumes from the last epoch, as
for a single process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def setup(device: str | torch.device | None = None) -> DistContext:
    """Read torchrun's environment; initialise the process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank=rank, world=world, local_rank=local_rank, device=device)


def wrap(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """DDP-wrapped model when distributed, else the model itself."""
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def all_reduce_sum(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum of `x` over ranks (a copy; `x` itself unchanged)."""
    if not ctx.distributed:
        return x
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def shard(indices, ctx: DistContext):
    """This rank's share of one global mini-batch (strided, so shares differ by at most one)."""
    return indices[ctx.rank :: ctx.world]


def cleanup(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
