"""Multi-process training under ``torchrun``: process group, DDP wrapping, loss averaging.

Every rank reads its contiguous shard of the same global batch (see ``trajlab.data.shard``), so the
logged global batch indices are those of a single-process run; gradients are averaged by DDP, so with
equal shards the update equals the single-process one up to floating-point summation order. BatchNorm
uses per-rank statistics unless ``sync_bn`` is set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> DistInfo:
        """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK from ``environ`` (absent: a single process).

        The library reads no environment itself: the CLI passes the process environment's values down
        (:attr:`trajlab.config.HostSettings.distributed_env`).
        """
        return cls(
            rank=int(environ.get("RANK", 0)),
            world_size=int(environ.get("WORLD_SIZE", 1)),
            local_rank=int(environ.get("LOCAL_RANK", 0)),
        )

    @classmethod
    def current(cls) -> DistInfo:
        """The initialised default process group's rank and size (a single process when there is none)."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        rank, size = dist.get_rank(), dist.get_world_size()
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return cls(rank=rank, world_size=size, local_rank=rank % gpus if gpus else 0)


def init_process_group(info: DistInfo, device: torch.device) -> bool:
    """gloo on CPU, nccl on CUDA; a no-op for a single process or when already initialised.

    Returns:
        Whether this call created the group (then the caller destroys it; a group the user made is theirs).
    """
    if not info.enabled or dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
    return True


def destroy_process_group() -> None:
    """Collect what still refers to the group, then destroy it (a no-op without one).

    The collection frees a DDP reducer left in a reference cycle before its process group goes: a gloo
    group still referenced at interpreter exit can abort the process (torch 2.13). No barrier here: on an
    error path another rank may be gone.
    """
    if dist.is_available() and dist.is_initialized():
        import gc

        gc.collect()
        dist.destroy_process_group()


def wrap_ddp(model: nn.Module, info: DistInfo, device: torch.device, *, sync_bn: bool = False) -> nn.Module:
    """The module to train through: DDP around ``model`` when distributed, else ``model`` itself."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def any_rank_failed(failed: bool) -> bool:
    """Whether any rank failed (one all-reduce of a flag under a process group; ``failed`` otherwise).

    Called once per step by every rank, so a rank whose writer failed stops every rank at the same step
    instead of leaving the others waiting in the next collective.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return failed
    # nccl moves CUDA tensors only; gloo CPU ones.
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([1.0 if failed else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """Average of a tensor over ranks (identity without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / dist.get_world_size()


def broadcast_object(obj, src: int = 0):  # noqa: ANN001, ANN201 - any picklable object between our own ranks
    """Send a small python object (e.g. a decision) from ``src`` to all ranks."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
