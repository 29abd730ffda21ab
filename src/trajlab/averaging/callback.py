"""Training callback that keeps online averages and evaluates them next to the live model."""

from __future__ import annotations

import logging
from typing import Any, Literal

from trajlab.averaging.bn import evaluate_with_bn
from trajlab.averaging.online import AveragedWeights
from trajlab.train.callbacks import CallbackBase, StepContext

logger = logging.getLogger(__name__)


class AveragingCallback(CallbackBase):
    """Updates an ``AveragedWeights`` after every optimizer step and evaluates each average.

    At every evaluation each average is swapped into the live model (``swap_into`` restores weights and
    buffers afterwards, also on error), BatchNorm statistics are recalibrated on ``bn_batches`` training
    batches when ``eval_bn="recalibrate"`` (or the live running statistics are used with ``"running"``),
    and ``ctx.evaluate`` runs the test set.

    Args:
        averaged: the averages (built on the live model before training starts).
        eval_bn: ``"recalibrate"`` (default, standard SWA practice) or ``"running"``.
        bn_batches: number of training batches for the recalibration.

    The metrics returned by ``on_eval`` are ``{name}/test_loss``, ``{name}/test_acc`` and
    ``{name}/bn_recalibrated`` (1.0 or 0.0, so the report can say which BN statistics were used).
    """

    name = "averaging"

    def __init__(
        self,
        averaged: AveragedWeights,
        eval_bn: Literal["recalibrate", "running"] = "recalibrate",
        bn_batches: int = 50,
    ) -> None:
        if eval_bn not in ("recalibrate", "running"):
            raise ValueError(f"eval_bn must be 'recalibrate' or 'running', got {eval_bn!r}")
        if bn_batches < 1:
            raise ValueError(f"bn_batches must be >= 1, got {bn_batches}")
        self.averaged = averaged
        self.eval_bn = eval_bn
        self.bn_batches = int(bn_batches)
        self._loaded = False

    def on_train_start(self, ctx: StepContext) -> None:
        # A fresh run may have changed the weights since construction (e.g. loaded init); a resumed one
        # already restored the averages in load_state_dict.
        if not self._loaded:
            self.averaged.reset(ctx.model, ctx.step)

    def on_step(self, ctx: StepContext) -> None:
        self.averaged.update(ctx.step, ctx.model)

    def on_eval(self, ctx: StepContext) -> dict[str, float]:
        if not self.averaged.active:
            return {}
        out: dict[str, float] = {}
        recal = self.eval_bn == "recalibrate"
        for name in self.averaged.names:
            with self.averaged.swap_into(ctx.model, name) as model:
                batches = ctx.train_batches(self.bn_batches) if recal else None
                _, metrics = evaluate_with_bn(model, ctx.evaluate, batches, self.bn_batches)
            out[f"{name}/test_loss"] = float(metrics["loss"])
            out[f"{name}/test_acc"] = float(metrics["acc"])
            out[f"{name}/bn_recalibrated"] = float(recal)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"averaged": self.averaged.state_dict(), "eval_bn": self.eval_bn}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged.load_state_dict(state["averaged"])
        self._loaded = True
