"""Small pieces of the recording: options turned into objects, references, the metrics log, and the two
collectives the recording needs under DDP (gather the global batch, agree that a rank failed)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trajlab.runs import references
from trajlab.train import distributed
from trajlab.train.metrics import MetricsLog

log = logging.getLogger(__name__)


def loss_hook(loss_fn: Any) -> Any:
    if loss_fn is None:
        return None
    if isinstance(loss_fn, str):
        loss_fn = references.load_reference(loss_fn, what="loss_fn")
    from trajlab.objective import as_loss_hook

    return as_loss_hook(loss_fn)


def schedule(spec: Any) -> Any:
    from trajlab.trajectory import SnapshotSchedule

    if isinstance(spec, bool) or (isinstance(spec, int) and spec < 1):
        raise ValueError(f"record(): snapshots must be a step interval >= 1 or a schedule, got {spec!r}")
    return SnapshotSchedule.parse({"every_steps": spec} if isinstance(spec, int) else spec)


def reference(obj: Any, what: str) -> str | None:
    if obj is None:
        return None
    ref = references.reference_of(obj)
    if ref is None:
        log.warning(
            "record(): %s %r has no importable name (a lambda, a closure or a notebook cell), so it is not "
            "recorded; define it at module level in a file to let `trajlab probe/average` rebuild the run",
            what,
            obj,
        )
    return ref


def metrics_log(run_dir: Path, tensorboard: bool | None) -> MetricsLog:
    from trajlab.train.metrics import tensorboard_installed

    wanted = tensorboard_installed() if tensorboard is None else tensorboard
    return MetricsLog(run_dir / "metrics.jsonl", tensorboard_dir=run_dir / "tensorboard" if wanted else None)


def no_evaluate(model: nn.Module) -> dict[str, float]:
    return {"loss": math.nan, "acc": math.nan}


def no_batches(count: int) -> Any:
    return iter(())


def any_rank_failed(dist_info: distributed.DistInfo, failed: bool) -> bool:
    """Whether any rank failed this step (one all-reduce under DDP; this rank's own answer otherwise)."""
    return distributed.any_rank_failed(failed) if dist_info.world_size > 1 else failed


def _collective_device() -> torch.device:
    # nccl moves CUDA tensors only; gloo CPU ones.
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_indices(local: torch.Tensor, dist_info: distributed.DistInfo) -> torch.Tensor:
    """Every rank's batch indices, concatenated in rank order (the global batch, on the CPU)."""
    import torch.distributed as dist

    device = _collective_device()
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(dist_info.world_size)]
    dist.all_gather(sizes, torch.tensor([local.numel()], dtype=torch.int64, device=device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.full((longest,), -1, dtype=torch.int64, device=device)
    padded[: local.numel()] = local.to(device)
    parts = [torch.empty(longest, dtype=torch.int64, device=device) for _ in range(dist_info.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)]).cpu()


def barrier(dist_info: distributed.DistInfo) -> None:
    if dist_info.world_size > 1:
        torch.distributed.barrier()
