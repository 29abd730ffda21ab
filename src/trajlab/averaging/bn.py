"""BatchNorm recalibration for averaged weights.

An average of weights is a point the network never trained at, so the running statistics of the live
model (or their average) do not describe its activations; standard SWA practice recomputes them with a
forward pass over training data in train mode.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


def _inputs(batch: Any) -> Any:
    # (x, y) pairs from a loader, or bare input tensors.
    return batch[0] if isinstance(batch, list | tuple) else batch


@torch.no_grad()
def update_bn(model: nn.Module, batches: Iterable[Any], max_batches: int | None = None) -> int:
    """Recompute every BatchNorm's running mean and variance from ``batches``.

    The statistics are reset and re-estimated as the cumulative average over the batches
    (``momentum=None``): ``running_mean = mean_b(batch_mean_b)``, ``running_var = mean_b(batch_var_b)``
    (unbiased per batch). Each module's ``momentum`` and train/eval flag are restored afterwards,
    gradients are never computed or touched, and parameters are not modified.

    Args:
        model: the model (any wrapper); runs ``model(x)`` with ``x = batch[0]`` for (x, y) batches.
        batches: iterable of batches already on the model's device.
        max_batches: stop after this many batches (``None``: all of them).

    Returns:
        The number of batches used (0 when the model has no BatchNorm; nothing is consumed then).

    Raises:
        ValueError: when the model has BatchNorm but ``batches`` yields nothing.
    """
    bns = [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not bns:
        return 0
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be >= 1 or None, got {max_batches}")
    modes = [(m, m.training) for m in model.modules()]
    momenta = [(bn, bn.momentum) for bn in bns]
    saved = [(bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()) for bn in bns]
    n = 0
    try:
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        model.train()
        for batch in batches:
            model(_inputs(batch))
            n += 1
            if max_batches is not None and n >= max_batches:
                break
        if n == 0:
            raise ValueError("update_bn got no batches; running statistics left unchanged")
    except BaseException:
        for bn, (mean, var, count) in zip(bns, saved):
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            bn.num_batches_tracked.copy_(count)
        raise
    finally:
        for bn, mom in momenta:
            bn.momentum = mom
        for m, flag in modes:
            m.training = flag
    return n
