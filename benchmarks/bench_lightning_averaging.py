"""Step time of trajlab's Lightning callback against Lightning's own ``WeightAveraging``, side by side.

One LightningModule (ResNet-20, 1-channel stem, on random 32x32 images, batch 128, SGD momentum 0.9),
one process, four modes in round-robin (the order rotates each round so drift in machine load hits all of
them alike):

* ``none``: no averaging callback;
* ``lightning_ema``: ``lightning.pytorch.callbacks.EMAWeightAveraging(decay=0.999)``: one
  ``AveragedModel`` (a deep copy of the module, BN buffers averaged too), one average;
* ``trajlab_1ema``: ``trajlab.integrations.lightning.TrajectoryCallback`` with ``EMA(0.999)``;
* ``trajlab_3ema_2pt``: the same with ``EMA(0.99), EMA(0.999), EMA(0.9999), TwoPoint(100)`` (one pass).

The trajlab modes also log every step's batch indices and write a metrics row every 10 steps; their
snapshot schedule is set beyond the block, so only ``theta_0`` is written (before timing starts).
Validation is off (``limit_val_batches=0``): the figure is the cost per training step. A block is a fresh
``Trainer.fit`` of ``--warmup`` + ``--steps`` steps; the time of the timed steps is measured between the
last callback's ``on_train_batch_end`` of step ``warmup`` and of the last step (so it includes every
callback's per-step work). Ratio of a mode = its step time / ``none``'s in the same round; medians over
rounds. On a shared 2-core machine the step-time ratios carry several percent of noise, so the time spent
inside the averaging callback's per-step hooks (``on_train_batch_start`` + ``on_train_batch_end``, where
both callbacks do all their per-step work) is also measured directly, per timed step.

Usage: ``python benchmarks/bench_lightning_averaging.py [--rounds 5] [--steps 30] [--warmup 5]
[--threads 1] [--out benchmarks/results/lightning_averaging.json]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from trajlab.averaging import EMA, TwoPoint
from trajlab.integrations.lightning import TrajectoryCallback
from trajlab.models import build_model

MODES = ("none", "lightning_ema", "trajlab_1ema", "trajlab_3ema_2pt")


class Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = build_model("resnet20", num_classes=10, in_channels=1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


class StepTimer(pl.Callback):
    """Wall time from the end of step ``start`` to the end of step ``stop`` (put it last)."""

    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop = start, stop
        self.t0 = self.seconds = 0.0

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.start:
            self.t0 = time.perf_counter()
        elif trainer.global_step == self.stop:
            self.seconds = time.perf_counter() - self.t0


class HookTimer:
    """Wraps a callback's per-step hooks and adds up the wall time spent inside them once ``timing``."""

    def __init__(self, callback: pl.Callback, timer: StepTimer) -> None:
        self.seconds = 0.0
        for name in ("on_train_batch_start", "on_train_batch_end"):
            setattr(callback, name, self._timed(getattr(callback, name), timer))

    def _timed(self, hook: Any, timer: StepTimer) -> Any:
        def run(trainer: pl.Trainer, *args: Any) -> None:
            t0 = time.perf_counter()
            hook(trainer, *args)
            if timer.t0 and not timer.seconds and trainer.global_step > timer.start:
                self.seconds += time.perf_counter() - t0

        return run


def _callbacks(mode: str, run_dir: Path) -> list[pl.Callback]:
    if mode == "lightning_ema":
        return [pl.callbacks.EMAWeightAveraging(decay=0.999)]
    rules = {
        "trajlab_1ema": [EMA(0.999)],
        "trajlab_3ema_2pt": [EMA(0.99), EMA(0.999), EMA(0.9999), TwoPoint(100)],
    }
    if mode in rules:
        return [TrajectoryCallback(run_dir, averages=rules[mode], snapshots=10**6, tensorboard=False)]
    return []


def _block(
    mode: str, data: TensorDataset, warmup: int, steps: int, root: Path, index: int
) -> tuple[float, float]:
    """(seconds per timed step, seconds per timed step inside the averaging callback's hooks)."""
    timer = StepTimer(warmup, warmup + steps)
    callbacks = _callbacks(mode, root / f"{mode}-{index}")
    hooks = [HookTimer(cb, timer) for cb in callbacks]
    trainer = pl.Trainer(
        max_steps=warmup + steps,
        callbacks=[*callbacks, timer],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(Net(), DataLoader(data, batch_size=128, shuffle=True))
    return timer.seconds / steps, sum(h.seconds for h in hooks) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/lightning_averaging.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    g = torch.Generator().manual_seed(0)
    n = 128 * (args.warmup + args.steps + 1)
    data = TensorDataset(torch.randn(n, 1, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))
    times: dict[str, list[float]] = {m: [] for m in MODES}
    hook_times: dict[str, list[float]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = MODES[r % len(MODES) :] + MODES[: r % len(MODES)]
            for mode in order:
                step_s, hook_s = _block(mode, data, args.warmup, args.steps, Path(tmp), r)
                times[mode].append(step_s)
                hook_times[mode].append(hook_s)
            print(
                f"round {r}: "
                + ", ".join(
                    f"{m} {times[m][-1] * 1e3:.1f} ms (hooks {hook_times[m][-1] * 1e3:.2f})" for m in MODES
                ),
                flush=True,
            )
    ratios = {
        m: statistics.median(t / b for t, b in zip(times[m], times["none"])) for m in MODES if m != "none"
    }
    result = {
        "model": "resnet20 (1-channel stem), random 1x32x32, batch 128, SGD momentum 0.9",
        "rounds": args.rounds,
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": args.threads,
        "step_ms_median": {m: statistics.median(t) * 1e3 for m, t in times.items()},
        "hook_ms_per_step_median": {m: statistics.median(t) * 1e3 for m, t in hook_times.items()},
        "hook_share_of_step_median": {
            m: statistics.median(h / t for h, t in zip(hook_times[m], times[m])) for m in MODES
        },
        "ratio_vs_none_median": ratios,
        "ratio_trajlab_3ema_2pt_vs_lightning_ema": statistics.median(
            a / b for a, b in zip(times["trajlab_3ema_2pt"], times["lightning_ema"])
        ),
        "ratio_trajlab_1ema_vs_lightning_ema": statistics.median(
            a / b for a, b in zip(times["trajlab_1ema"], times["lightning_ema"])
        ),
        "raw_s_per_step": times,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "lightning": pl.__version__,
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "raw_s_per_step"}, indent=2))


if __name__ == "__main__":
    main()
