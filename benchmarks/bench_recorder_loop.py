"""Cost of ``trajlab.record`` over the same plain PyTorch loop without it, side by side in one process.

A user's loop: ResNet-20 on Fashion-MNIST (padded to 32x32, a ``TensorDataset``, a shuffling
``DataLoader`` of batch 128), SGD with momentum. Three modes, round-robin (the order rotates each round so
drift in machine load hits all of them alike):

* ``bare``: the loop as the user wrote it;
* ``every_10``: the same loop inside ``trajlab.record`` with a snapshot every 10 steps (and the batch
  indices of every step, a metrics row every 10 steps);
* ``every_1``: a snapshot every step.

A block is ``--warmup`` steps, then ``--steps`` timed steps (a multiple of 10); the cost of a mode is
``time(mode) / time(bare) - 1`` within a round, median over rounds. Each block is a fresh recording (a new
run directory), so the snapshot writer's queue and back-pressure count; the final flush at the end of a
block does not (it is not a training step).

Targets (issue 13): every step <= 5 %, every 10 steps <= 1 %.

Usage: ``python benchmarks/bench_recorder_loop.py [--rounds 7] [--steps 30] [--warmup 5] [--threads 0]
[--synthetic] [--out benchmarks/results/recorder_loop.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import trajlab
from trajlab.data import DataError, load_dataset
from trajlab.models import build_model

MODES = {"bare": None, "every_10": 10, "every_1": 1}


def _data(synthetic: bool, n: int) -> TensorDataset:
    if not synthetic:
        try:
            ds = load_dataset("fashion-mnist", "train", pad_to=32)
            x = (ds.images[:n].float() / 255 - ds.mean[0]) / ds.std[0]
            return TensorDataset(x.contiguous(), ds.labels[:n])
        except DataError:
            pass
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 1, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))


def loss_fn(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def _block(mode: str, data: TensorDataset, warmup: int, steps: int, root: Path) -> float:
    """Seconds of ``steps`` timed steps of the loop in ``mode`` (after ``warmup`` steps)."""
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = DataLoader(data, batch_size=128, shuffle=True, drop_last=True)
    every = MODES[mode]
    times: list[float] = []

    def loop(batches: Any) -> None:
        for i, batch in enumerate(batches):
            if i == warmup:
                times.append(time.perf_counter())
            loss = loss_fn(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i + 1 == warmup + steps:
                times.append(time.perf_counter())
                return

    if every is None:
        loop(loader)
    else:
        run_dir = Path(tempfile.mkdtemp(dir=root))
        with trajlab.record(
            run_dir, model, opt, loss_fn=loss_fn, snapshots=every, checkpoint_every_steps=0, tensorboard=False
        ) as rec:
            loop(rec.batches(loader, max_steps=warmup + steps))
    return times[1] - times[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--synthetic", action="store_true", help="random tensors instead of Fashion-MNIST")
    ap.add_argument("--out", default="benchmarks/results/recorder_loop.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = _data(args.synthetic, 128 * (args.warmup + args.steps + 2))
    modes = list(MODES)
    rounds: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = modes[r % len(modes) :] + modes[: r % len(modes)]
            seconds = {m: _block(m, data, args.warmup, args.steps, Path(tmp)) for m in order}
            rounds.append(seconds)
            print(
                f"round {r}: " + ", ".join(f"{m} {seconds[m] / args.steps * 1e3:.1f} ms/step" for m in modes)
            )
    cost = {m: statistics.median(s[m] / s["bare"] - 1 for s in rounds) for m in modes if m != "bare"}
    result = {
        "benchmark": "bench_recorder_loop",
        "model": "resnet20 (1 channel), batch 128, 32x32",
        "threads": torch.get_num_threads(),
        "rounds": rounds,
        "steps_per_block": args.steps,
        "median_cost": cost,
        "targets": {"every_1": 0.05, "every_10": 0.01},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "trajlab": trajlab.__version__,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for m, c in cost.items():
        print(f"{m}: median cost {c:+.1%} (target <= {result['targets'][m]:.0%})")


if __name__ == "__main__":
    main()
