"""BatchNorm recalibration for averaged weights.

An average of weights is a point the network never trained at, so the running statistics of the live
model (or their average) do not describe its activations; standard SWA practice recomputes them with a
forward pass over training data in train mode.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn


def _inputs(batch: Any) -> Any:
    # (x, y) pairs from a loader, or bare input tensors; anything else needs a forward hook.
    if isinstance(batch, list | tuple) and batch:
        return batch[0]
    if isinstance(batch, torch.Tensor):
        return batch
    raise TypeError(
        f"update_bn got a {type(batch).__name__} batch: pass forward=loss_fn (a hook loss_fn(model, batch)) "
        "to feed such batches"
    )


def _argument_order(first: Any, second: Any) -> tuple[Iterable[Any], nn.Module]:
    """``(batches, model)``; the pre-0.2 order ``(model, batches)`` still works for one release."""
    if isinstance(first, nn.Module) and not isinstance(second, nn.Module):
        warnings.warn(
            "update_bn(model, batches) is deprecated; use torch's order update_bn(batches, model)",
            DeprecationWarning,
            stacklevel=3,
        )
        return second, first
    if not isinstance(second, nn.Module):
        raise TypeError(f"update_bn(batches, model): model must be an nn.Module, got {type(second).__name__}")
    return first, second


@torch.no_grad()
def update_bn(
    batches: Iterable[Any],
    model: nn.Module,
    max_batches: int | None = None,
    *,
    forward: Callable[[nn.Module, Any], Any] | None = None,
) -> int:
    """Recompute every BatchNorm's running mean and variance from ``batches``.

    The argument order is torch's (``torch.optim.swa_utils.update_bn(loader, model)``). The statistics are
    reset and re-estimated as the cumulative average over the batches (``momentum=None``):
    ``running_mean = mean_b(batch_mean_b)``, ``running_var = mean_b(batch_var_b)`` (unbiased per batch).
    Each module's ``momentum`` and train/eval flag are restored afterwards, gradients are never computed
    or touched, and parameters are not modified.

    Args:
        batches: iterable of batches already on the model's device.
        model: the model (any wrapper).
        max_batches: stop after this many batches (``None``: all of them).
        forward: how to run the model on one batch, ``forward(model, batch)`` (e.g. a
            ``loss_fn(model, batch)`` hook for dict batches); default ``model(x)`` with ``x = batch[0]``
            for (x, y) batches, or the batch itself.

    Returns:
        The number of batches used (0 when the model has no BatchNorm; nothing is consumed then).

    Raises:
        ValueError: when the model has BatchNorm but ``batches`` yields nothing.
    """
    batches, model = _argument_order(batches, model)
    run = forward if forward is not None else (lambda m, b: m(_inputs(b)))
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
            run(model, batch)
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


BN_RECALIBRATED, BN_RUNNING, BN_NONE = "recalibrated", "running", "none (no BatchNorm)"


def evaluate_with_bn(
    model: nn.Module,
    evaluate: Callable[[nn.Module], Mapping[str, float]],
    recalibration_batches: Iterable[Any] | None,
    max_batches: int | None = None,
    *,
    forward: Callable[[nn.Module, Any], Any] | None = None,
) -> tuple[str, dict[str, float]]:
    """The one "recalibrate BatchNorm, then evaluate": ``(bn, metrics)`` of ``model`` as it stands.

    With ``recalibration_batches`` the BN statistics are recomputed on them first (:func:`update_bn`; this
    overwrites the model's running statistics, so pass a scratch copy or a swapped-in average); with
    ``None`` the running statistics the model holds are used. ``bn`` says which: ``"recalibrated"``,
    ``"running"``, or ``"none (no BatchNorm)"`` when there was nothing to recalibrate.
    """
    bn = BN_RUNNING
    if recalibration_batches is not None:
        used = update_bn(recalibration_batches, model, max_batches, forward=forward)
        bn = BN_RECALIBRATED if used else BN_NONE
    return bn, {k: float(v) for k, v in evaluate(model).items()}
