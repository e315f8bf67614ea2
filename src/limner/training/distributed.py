"""Multi-process data-parallel training under ``torchrun`` (DDP: Li et al., 2020,
https://arxiv.org/abs/2006.15704).

``torchrun --nproc_per_node=N -m limner train ...`` sets RANK/WORLD_SIZE/LOCAL_RANK; the
trainer then starts a process group (gloo on CPU, NCCL on CUDA), wraps each trainable module of
the family in ``DistributedDataParallel``, averages logged scalars over ranks, and lets only
rank 0 write files. Without those variables everything here is a no-op for one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # True when the trainer started the process group (and ends it)

    @property
    def enabled(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0, the only rank that writes files."""
        return self.rank == 0


def env_dist_info() -> DistInfo:
    """Rank/world size from torchrun's environment (or an existing process group)."""
    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return DistInfo(dist.get_rank(), dist.get_world_size(), local)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return DistInfo(rank, world, int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(device: str, info: DistInfo) -> torch.device:
    """The training device of this rank (``cuda`` means ``cuda:LOCAL_RANK`` under torchrun)."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", info.local_rank if info.enabled else 0)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


def init_distributed(device: torch.device) -> DistInfo:
    """Start the process group when launched by torchrun with more than one process."""
    info = env_dist_info()
    if not info.enabled or dist.is_initialized():
        return info
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {"backend": backend}
    if device.type == "cuda":
        kwargs["device_id"] = device
    dist.init_process_group(**kwargs)
    return DistInfo(info.rank, info.world_size, info.local_rank, owns_group=True)


def shutdown(info: DistInfo) -> None:
    """Destroy the process group if the trainer created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def wrap_modules(modules: Mapping[str, nn.Module], device: torch.device, info: DistInfo
                 ) -> dict[str, nn.Module]:
    """DDP wrappers for modules with trainable parameters (others are returned as-is)."""
    if not info.enabled:
        return dict(modules)
    wrapped = {}
    for name, module in modules.items():
        if any(p.requires_grad for p in module.parameters()):
            ids = [device.index] if device.type == "cuda" else None
            wrapped[name] = DistributedDataParallel(module, device_ids=ids)
        else:
            wrapped[name] = module
    return wrapped


def set_grad_sync(module: nn.Module, enabled: bool) -> None:
    """Whether the next forward/backward of a DDP module all-reduces gradients.

    This is the switch ``DistributedDataParallel.no_sync()`` flips; it is read at forward time,
    so the trainer sets it before each micro-batch's forward rather than around the backward.
    """
    if isinstance(module, DistributedDataParallel):
        module.require_backward_grad_sync = enabled


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a float64 CPU tensor over ranks (moved to the backend's device and back)."""
    if not info.enabled:
        return values
    device = torch.device("cuda", torch.cuda.current_device()) \
        if dist.get_backend() == "nccl" else torch.device("cpu")
    buf = values.to(device)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.cpu()


def all_ranks_true(flag: bool, info: DistInfo) -> bool:
    """True only when ``flag`` holds on every rank."""
    if not info.enabled:
        return flag
    total = all_reduce_sum(torch.tensor([1.0 if flag else 0.0], dtype=torch.float64), info)
    return int(total.item()) == info.world_size


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` (in rank order) on every rank."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    """Wait for every rank."""
    if info.enabled:
        dist.barrier()
