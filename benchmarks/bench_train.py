"""Training throughput of trajlab's engine vs a minimal hand-written PyTorch loop (issue 2).

Same model (ResNet-20, 1-channel stem, channels_last), same data (Fashion-MNIST padded to 32x32,
random crop + flip), same batch size, same optimizer. The two loops run side by side in one process,
alternating blocks of steps, so machine noise hits both alike; the figure is the ratio of the median
images/s. Writes ``benchmarks/results/train_throughput.json``.

    python benchmarks/bench_train.py [--steps-per-block 20] [--blocks 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from trajlab.config import resolve_config
from trajlab.provenance import provenance
from trajlab.runs import build
from trajlab.train.engine import Trainer


def hand_loop_factory(ds, model, batch_size: int, lr: float, seed: int):
    """The minimal loop: index, pad+crop+flip, normalise, forward, backward, SGD step."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, foreach=True)
    gen = torch.Generator().manual_seed(seed)
    images, labels = ds.images, ds.labels
    mean, std = ds.mean[0], ds.std[0]
    n, _, h, w = images.shape
    ar_h, ar_w = torch.arange(h), torch.arange(w)

    def run(steps: int) -> None:
        model.train()
        for _ in range(steps):
            idx = torch.randint(0, n, (batch_size,), generator=gen)
            x = F.pad(images[idx], (4, 4, 4, 4))
            dy = torch.randint(0, 9, (batch_size,), generator=gen)
            dx = torch.randint(0, 9, (batch_size,), generator=gen)
            rows = (dy[:, None] + ar_h)[:, None, :, None]
            cols = (dx[:, None] + ar_w)[:, None, None, :]
            x = x[
                torch.arange(batch_size)[:, None, None, None],
                torch.arange(x.shape[1])[None, :, None, None],
                rows,
                cols,
            ]
            flip = torch.rand(batch_size, generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            x = ((x.float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps-per-block", type=int, default=20)
    ap.add_argument("--blocks", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_throughput.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cfg = resolve_config("fashion-resnet20", overrides=["train.progress=false"])
    ds = build.build_train_data(cfg)
    device = torch.device("cpu")

    torch.manual_seed(0)
    model_a = build.build_model_for(cfg, ds).to(memory_format=torch.channels_last)
    batches = build.DatasetBatches(
        ds, cfg.data, batch_size=cfg.train.batch_size, seed=0, device=device, channels_last=True
    )
    trainer = Trainer(
        model_a,
        build.build_optimizer_for(cfg, model_a),
        build.build_schedule_for(cfg, 10**9),
        batches,
        evaluate=lambda m: {"loss": 0.0, "acc": 0.0},
        total_steps=10**9,
        eval_every_steps=10**9,
        log_every_steps=10**6,
        progress=False,
    )

    def run_trainer(steps: int) -> None:
        # Drive the engine's own step (schedule, batch building, forward/backward/step, loss bookkeeping,
        # divergence check, callbacks): the same code fit() runs, minus evaluation.
        for _ in range(steps):
            step = trainer.step + 1
            trainer._train_step(step, float(trainer.lr_at(step)))
            trainer.step = step

    torch.manual_seed(0)
    model_b = build.build_model_for(cfg, ds).to(memory_format=torch.channels_last)
    run_hand = hand_loop_factory(ds, model_b, cfg.train.batch_size, cfg.optim.lr, seed=0)

    for fn in (run_trainer, run_hand):  # warm-up
        fn(3)
    rates: dict[str, list[float]] = {"trajlab": [], "hand_loop": []}
    for block in range(args.blocks):
        order = [("trajlab", run_trainer), ("hand_loop", run_hand)]
        if block % 2:
            order.reverse()
        for name, fn in order:
            t0 = time.perf_counter()
            fn(args.steps_per_block)
            rates[name].append(args.steps_per_block * cfg.train.batch_size / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in rates.items()}
    result = {
        "benchmark": "train_throughput",
        "what": "images/s of trajlab's training step vs a minimal hand-written loop, fashion-resnet20",
        "ratio_trajlab_over_hand": med["trajlab"] / med["hand_loop"],
        "median_images_per_s": med,
        "blocks": rates,
        "steps_per_block": args.steps_per_block,
        "threads": args.threads,
        "provenance": provenance(seed=0, command=["python", "benchmarks/bench_train.py"]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"ratio": result["ratio_trajlab_over_hand"], "median_images_per_s": med}, indent=2))


if __name__ == "__main__":
    main()
