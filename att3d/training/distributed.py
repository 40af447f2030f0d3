"""Multi-process training (``torchrun``): the process group, prompt shards, collectives and DDP.

The process group comes from torchrun's environment (gloo on CPU, NCCL on CUDA). Only the field is
wrapped in DistributedDataParallel (the frozen prior never is), each rank draws its plain prompts from
its own shard of the set, and every helper here is a no-op in a single process.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from att3d.devices import resolve_device


@dataclass
class DistInfo:
    """Where this process sits in a (possibly single-process) run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool
    """Whether :func:`init_distributed` created the process group (and so destroys it)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str) -> DistInfo:
    """Join the process group described by torchrun's environment (``WORLD_SIZE``, ``RANK``, ...).

    Without those variables this is a single process. An already initialized group is reused.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owns = True
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device, owns)
    return DistInfo(0, 1, 0, device, owns)


def shard_indices(count: int, rank: int, world_size: int) -> list[int]:
    """The prompt indices rank ``rank`` draws plain prompts from (every rank gets all if too few)."""
    if count < world_size:
        return list(range(count))
    return list(range(rank, count, world_size))


def reduce_scalars(info: DistInfo, values: dict[str, Tensor]) -> dict[str, float]:
    """Mean of each scalar over all processes (one all-reduce)."""
    names = list(values)
    packed = torch.stack([values[n].detach().float().reshape(()) for n in names]).to(info.device)
    if info.distributed:
        dist.all_reduce(packed)
        packed /= info.world_size
    return dict(zip(names, packed.tolist(), strict=True))


def any_rank(info: DistInfo, flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any (keeps all ranks stopping at the same step)."""
    if not info.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def wrap_ddp(field: nn.Module, info: DistInfo) -> nn.Module:
    """``field`` wrapped for gradient averaging across processes (``field`` itself in one process)."""
    if not info.distributed:
        return field
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [info.device.index] if info.device.type == "cuda" else None
    # No buffer broadcast in forward: the only buffers are the spectral-norm power-iteration vectors,
    # which every rank computes identically from identical weights, and the renderer calls the field
    # several times per step. Newer torch names the switch forward_sync_buffers.
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        no_sync = {"forward_sync_buffers": False}
    else:
        no_sync = {"broadcast_buffers": False}
    return DistributedDataParallel(field, device_ids=device_ids, **no_sync)
