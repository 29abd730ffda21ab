"""Builds the optional training callbacks (averaging, probes) from a RunConfig.

``train/`` never imports these packages; this glue does.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from trajlab.config import HostSettings, RunConfig
from trajlab.train.callbacks import CallbackBase, StepContext


def averaging_rules(cfg: RunConfig) -> tuple[list[Any], list[int]]:
    """The rules named by ``cfg.averaging`` and the update period of each.

    TwoPoint averages update every ``gcd(gap, eval period)`` steps: exact at every evaluation, with a
    ring of ``gap / period + 1`` snapshots instead of ``gap + 1``.
    """
    from trajlab.averaging import EMA, SWA, TwoPoint

    a = cfg.averaging
    rules: list[Any] = []
    every: list[int] = []
    for decay in a.ema_decays:
        rules.append(EMA(decay=decay))
        every.append(a.every_steps)
    for half_life in a.ema_half_life_steps:
        rules.append(EMA(half_life_steps=half_life))
        every.append(a.every_steps)
    for start in a.swa_start_steps:
        rules.append(SWA(start_step=start))
        every.append(a.every_steps)
    eval_every = cfg.train.eval_every_steps or 0
    for gap in a.two_point_gaps:
        rules.append(TwoPoint(gap_steps=gap))
        every.append(math.gcd(gap, eval_every) if eval_every else a.every_steps)
    return rules, every


def storage_options(cfg: RunConfig, host: HostSettings) -> Any:
    """The averages' :class:`~trajlab.averaging.StorageOptions` from the config and the host."""
    from trajlab.averaging import KernelBuild, StorageOptions

    return StorageOptions(
        device=torch.device(cfg.averaging.device) if cfg.averaging.device else None,
        cpu_kernel=host.cpu_kernel,
        kernel_build=KernelBuild(cache_root=host.kernel_cache_root, compiler=host.compiler),
    )


def averaging_callback(cfg: RunConfig, model: nn.Module, host: HostSettings | None = None) -> CallbackBase:
    from trajlab.averaging import AveragedWeights, AveragingCallback

    rules, every = averaging_rules(cfg)
    averaged = AveragedWeights(
        model, rules, every_steps=every, storage=storage_options(cfg, host or HostSettings())
    )
    return AveragingCallback(averaged, eval_bn=cfg.averaging.eval_bn, bn_batches=cfg.averaging.bn_batches)


class LiveRecalibrated(CallbackBase):
    """Evaluates the live model with recalibrated BatchNorm statistics, on a scratch copy.

    Averages are evaluated with recalibrated BN; recalibration alone moves accuracy by several points, so
    the fair baseline is the last iterate recalibrated the same way (reported as ``live_recal/*``).
    """

    name = "live_recalibrated"

    def __init__(self, bn_batches: int) -> None:
        self.bn_batches = bn_batches

    def on_eval(self, ctx: StepContext) -> dict[str, float]:
        from trajlab.averaging import evaluate_with_bn

        scratch = copy.deepcopy(ctx.model)
        _, metrics = evaluate_with_bn(
            scratch, ctx.evaluate, ctx.train_batches(self.bn_batches), self.bn_batches
        )
        return {"live_recal/test_loss": float(metrics["loss"]), "live_recal/test_acc": float(metrics["acc"])}


def probe_callback(
    cfg: RunConfig, run_dir: Any, batches: Any, host: HostSettings | None = None
) -> CallbackBase:
    """Online line probes (``cfg.probes``) appended to ``RUN/probes/online.jsonl``.

    The probed batch B_t is rebuilt by ``batches.batch(t)`` (this rank's rows; the callback runs on rank 0
    only); the held-out controls are the run's first ``probes.heldout_batches`` held-out batches
    (:func:`trajlab.runs.build.heldout_batches`); the direction includes coupled weight decay for SGD (what
    its update uses) and none for AdamW.
    """
    from pathlib import Path

    from trajlab.probes import ProbeCallback
    from trajlab.runs.build import build_test_data, heldout_batches

    p = cfg.probes
    heldout = []
    if p.heldout_batches > 0:
        test_ds = build_test_data(cfg, (host or HostSettings()).data_dirs)
        heldout = heldout_batches(test_ds, cfg.data, batch_size=cfg.train.batch_size, count=p.heldout_batches)

    def batch_fn(ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        x, y, _, _ = batches.batch(ctx.step)
        return x, y

    return ProbeCallback(
        Path(run_dir) / "probes" / "online.jsonl",
        every_steps=p.every_steps,
        heldout_batches=heldout,
        bn_modes=(p.bn,),
        weight_decay=cfg.optim.weight_decay if cfg.optim.name == "sgd" else 0.0,
        batch_fn=batch_fn,
    )
