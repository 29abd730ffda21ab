"""Test-set evaluation: mean loss and accuracy of a model in eval mode, restoring its mode after."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    *,
    autocast_dtype: torch.dtype | None = None,
    device_type: str = "cpu",
) -> dict[str, float]:
    """Mean cross-entropy (``loss``) and accuracy (``acc``) over ``batches()`` with running BN statistics.

    Sums are accumulated on the device in float64 and read once at the end (one host sync).
    """
    was_training = model.training
    model.eval()
    total_loss = None
    correct = None
    n = 0
    ctx = torch.autocast(device_type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    try:
        for x, y in batches():
            with ctx:
                logits = model(x)
            logits = logits.float()
            loss = F.cross_entropy(logits, y, reduction="sum").double()
            hits = (logits.argmax(dim=1) == y).sum()
            total_loss = loss if total_loss is None else total_loss + loss
            correct = hits if correct is None else correct + hits
            n += y.numel()
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("evaluation got no batches (is the test set empty?)")
    return {"loss": total_loss.item() / n, "acc": correct.item() / n}
