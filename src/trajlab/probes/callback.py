"""Online line profiles during training, as a :class:`trajlab.train.callbacks.CallbackBase`.

Every ``every_steps`` steps (after the update that produced theta_t) it profiles the batch just used,
B_t, along its own gradient, with held-out batches as the control, and appends one JSON line per BN mode
to ``path``. After the first profile each one starts from the previous lr* (``lr_guess``), so a probe
costs about 8 forwards + 1 backward (+ the control forwards).

The engine's context does not carry the batch tensors; the wiring passes ``batch_fn(ctx) -> batch``
(e.g. rebuilding B_t from ``ctx.batch_indices`` and ``ctx.aug_seed``), or puts the batch in
``ctx.extra["batch"]``, which the default ``batch_fn`` reads. Batches may have any shape the loss hook
takes (:mod:`trajlab.objective`); they are moved to the training device.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from trajlab.objective import as_loss_hook, batch_to
from trajlab.probes._functional import BN_MODES, Batch, LossFn, check_batch
from trajlab.probes.line import line_profile
from trajlab.train.callbacks import CallbackBase, StepContext

logger = logging.getLogger(__name__)


def batch_from_extra(ctx: StepContext) -> Batch:
    """Default ``batch_fn``: the batch B_t the engine (or wiring) left in ``ctx.extra["batch"]``."""
    if "batch" not in ctx.extra:
        raise KeyError(
            "ProbeCallback needs the batch just used: pass batch_fn=... (e.g. rebuilt from "
            'ctx.batch_indices) or have the training loop set ctx.extra["batch"] = (x, y)'
        )
    return check_batch(ctx.extra["batch"], 'ctx.extra["batch"]')


class ProbeCallback(CallbackBase):
    """Line profiles on a schedule, appended as JSON lines.

    Args:
        path: the JSON-lines file to append to (created with its parent directory; rank 0 only).
        every_steps: probe when ``step % every_steps == 0`` (or pass ``schedule``).
        heldout_batches: control batches (CPU is fine; moved to the training device).
        loss_fn: the loss hook ``loss_fn(model, batch) -> scalar``, or a criterion for ``(x, y)`` batches
            (see :mod:`trajlab.objective`).
        bn_modes: BN modes to profile, any of ``("batch", "running")``.
        weight_decay: coupled L2 coefficient included in the direction (0: plain gradient).
        batch_fn: ``batch_fn(ctx) -> batch`` returning B_t; default :func:`batch_from_extra`.
        schedule: ``schedule(step) -> bool``; overrides ``every_steps``.
        num_points: lr budget of the first (adaptive) profile.
        max_forwards: forward budget of the later profiles started from the previous lr*.
        hvp: also compute the exact HVP curvature (it shares the gradient's backward; see BENCHMARKS.md
            for its cost in forward+backward passes).
    """

    name = "probes"

    def __init__(
        self,
        path: str | os.PathLike[str],
        every_steps: int = 100,
        heldout_batches: Sequence[Batch] = (),
        loss_fn: LossFn = torch.nn.functional.cross_entropy,
        *,
        bn_modes: Sequence[str] = ("batch",),
        weight_decay: float = 0.0,
        batch_fn: Callable[[StepContext], Batch] = batch_from_extra,
        schedule: Callable[[int], bool] | None = None,
        num_points: int = 32,
        max_forwards: int = 8,
        hvp: bool = False,
    ) -> None:
        if every_steps < 1:
            raise ValueError(f"every_steps must be >= 1, got {every_steps}")
        bad = [m for m in bn_modes if m not in BN_MODES]
        if bad or not bn_modes:
            raise ValueError(f"bn_modes must be a non-empty subset of {BN_MODES}, got {list(bn_modes)}")
        self.path = Path(path)
        self.every_steps = every_steps
        self.loss_fn = as_loss_hook(loss_fn)
        self.heldout = [
            check_batch(b, f"heldout_batches[{i}]", self.loss_fn) for i, b in enumerate(heldout_batches)
        ]
        self.bn_modes = tuple(bn_modes)
        self.weight_decay = weight_decay
        self.batch_fn = batch_fn
        self.schedule = schedule
        self.num_points = num_points
        self.max_forwards = max_forwards
        self.hvp = hvp
        self.last_lr_star: dict[str, float] = {}

    def should_probe(self, step: int) -> bool:
        if self.schedule is not None:
            return bool(self.schedule(step))
        return step > 0 and step % self.every_steps == 0

    def on_step(self, ctx: StepContext) -> None:
        if ctx.rank != 0 or not self.should_probe(ctx.step):
            return
        batch = batch_to(self.batch_fn(ctx), ctx.device)
        controls = {f"heldout_{i}": batch_to(b, ctx.device) for i, b in enumerate(self.heldout)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for bn in self.bn_modes:
            guess = self.last_lr_star.get(bn)
            profile = line_profile(
                ctx.model,
                self.loss_fn,
                batch,
                eval_batches=controls,
                bn=bn,
                weight_decay=self.weight_decay,
                lr_guess=guess if guess is not None and math.isfinite(guess) and guess > 0 else None,
                num_points=self.num_points,
                max_forwards=self.max_forwards,
                hvp=self.hvp,
            )
            if profile.lr_star > 0:  # a lower bound when unbracketed: the next search expands from it
                self.last_lr_star[bn] = profile.lr_star
            record = {
                "step": ctx.step,
                "epoch": ctx.epoch,
                "lr": ctx.lr,
                "lr_star_over_lr": _ratio(profile, ctx.lr),
            }
            record.update(profile.to_dict())
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            logger.debug("probe step %d bn=%s lr*=%.4g r2=%.4f", ctx.step, bn, profile.lr_star, profile.r2)

    def state_dict(self) -> dict[str, Any]:
        return {"last_lr_star": dict(self.last_lr_star)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_lr_star = {str(k): float(v) for k, v in state.get("last_lr_star", {}).items()}


def _ratio(profile, lr: float) -> float:
    return profile.lr_star / lr if lr > 0 else math.nan
