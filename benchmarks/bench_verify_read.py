"""Cost of verifying snapshots on read: post-hoc averaging over 50 snapshots, with and without it.

Every reader checks what it reads against the manifest's sha256 (``TrajectoryStore(verify=True)``, the
default; ``--no-verify`` on the CLI turns it off). The hash is taken over the bytes already read for
parsing, so the cost is one sha256 pass per snapshot and no second read.

One run is trained once (ResNet-20, a snapshot at every step, 50 snapshots), then the same post-hoc
computation (an EMA and an SWA (uniform) average over all 50 snapshots, in one streaming pass) runs with and
without verification, alternating which goes first, in one process. The figure is the median over
rounds of ``time(verify) / time(no verify)``; the files sit in the page cache for both.

Target (issue 14): <= 1.10.

Usage: ``python benchmarks/bench_verify_read.py [--rounds 15] [--width 16] [--threads 1]
[--out benchmarks/results/verify_read.json]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from trajlab.averaging.post_hoc import post_hoc_many
from trajlab.averaging.rules import EMA, SWA
from trajlab.config import resolve_config
from trajlab.provenance import provenance
from trajlab.runs import run_training
from trajlab.trajectory import TrajectoryStore

logger = logging.getLogger("bench_verify_read")


def _train(run_dir: Path, width: int, snapshots: int) -> None:
    overrides = [
        "data.name=synthetic",
        "data.pad_to=0",
        "data.train_subset=0",
        "data.test_subset=0",
        "data.synthetic={n = 512, n_test = 64, num_classes = 10, channels = 3, size = 32, seed = 0}",
        "model.name=resnet20",
        f"model.width={width}",
        "train.batch_size=32",
        f"train.steps={snapshots - 1}",
        f"train.eval_every_steps={snapshots - 1}",
        "train.progress=false",
        "train.tensorboard=false",
        "record.enabled=true",
        "record.snapshots={every_steps = 1}",
    ]
    run_training(resolve_config(None, None, overrides), run_dir)


def _time_once(run_dir: Path, verify: bool) -> float:
    store = TrajectoryStore(run_dir, verify=verify)
    last = store.steps()[-1]
    t0 = time.perf_counter()
    post_hoc_many(store, [EMA(0.9), SWA()], [last])
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--width", type=int, default=16, help="ResNet-20 base width (16: 0.27M parameters)")
    parser.add_argument("--snapshots", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/verify_read.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        _train(run_dir, args.width, args.snapshots)
        store = TrajectoryStore(run_dir)
        steps = store.steps()
        snapshot_bytes = sum(store.entry(s).bytes for s in steps)
        _time_once(run_dir, True), _time_once(run_dir, False)  # warm the page cache and the code paths
        ratios, times = [], {"verify": [], "no_verify": []}
        for i in range(args.rounds):
            order = (True, False) if i % 2 == 0 else (False, True)
            t = {v: _time_once(run_dir, v) for v in order}
            times["verify"].append(t[True])
            times["no_verify"].append(t[False])
            ratios.append(t[True] / t[False])
    result = {
        "provenance": provenance(seed=0, device="cpu", command=sys.argv),
        "threads": args.threads,
        "setup": f"resnet20 width {args.width}, {len(steps)} float32 snapshots "
        f"({snapshot_bytes / 1e6:.1f} MB), post_hoc_many(EMA 0.9 + SWA) at the last step, page cache warm",
        "rounds": args.rounds,
        "median_s": {k: statistics.median(v) for k, v in times.items()},
        "median_ratio_verify_over_no_verify": statistics.median(ratios),
        "ratios": ratios,
        "target": 1.10,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    logger.info(
        "verify on read: median %.3f s vs %.3f s without, ratio %.3f (target <= 1.10); wrote %s",
        result["median_s"]["verify"],
        result["median_s"]["no_verify"],
        result["median_ratio_verify_over_no_verify"],
        args.out,
    )


if __name__ == "__main__":
    main()
