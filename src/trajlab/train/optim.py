"""Optimizers: SGD (momentum, Nesterov, coupled weight decay) and AdamW (decoupled weight decay)."""

from __future__ import annotations

import torch
from torch import nn


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    *,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """The optimizer over all trainable parameters.

    SGD's ``weight_decay`` adds ``wd * theta`` to the gradient (coupled, as in the ResNet papers); AdamW's is
    decoupled (``theta -= lr * wd * theta``). ``foreach`` kernels are used when available.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, foreach=True
        )
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=True)
    raise ValueError(f"unknown optimizer {name!r}: use 'sgd' or 'adamw'")
