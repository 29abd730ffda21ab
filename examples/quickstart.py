"""The README's library quickstart, runnable: train and record, probe a stored batch, average post hoc,
ask the theory. ``python examples/quickstart.py`` uses Fashion-MNIST (about 2 minutes on 2 cores);
``--tiny`` uses synthetic data (seconds; the test suite runs it)."""

import argparse
import tempfile

import torch

from trajlab.averaging import EMA, TwoPoint, post_hoc
from trajlab.config import resolve_config
from trajlab.probes import line_profile
from trajlab.runs import RecordedRun, run_training
from trajlab.theory import NoisyQuadratic, equivalent_schedule

TINY = [
    "data.name=synthetic",
    "data.pad_to=0",
    "data.train_subset=0",
    "data.synthetic={n = 256, n_test = 128, num_classes = 4, size = 16}",
    "model.width=4",
    "train.batch_size=32",
    "train.steps=64",
    "train.eval_every_steps=32",
    "train.progress=false",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="trajlab-quickstart-")

    # 1. train and record: a snapshot every 32 steps, every step's batch indices
    overrides = ["train.epochs=1", "record.enabled=true", "record.snapshots={every_steps = 32}"]
    cfg = resolve_config("fashion-resnet20", overrides=overrides + (TINY if args.tiny else []))
    run_training(cfg, out)

    # 2. probe a fixed batch along its own gradient at the last stored checkpoint
    run = RecordedRun(out)  # the run directory, opened once: config, data, model, snapshots, batches
    step = run.snapshot_steps[-1]
    model = run.load_weights(step)
    x, y = run.batch(step)  # the exact (augmented) batch that step trained on
    prof = line_profile(model, torch.nn.functional.cross_entropy, (x, y))
    print(
        f"step {step}: lr* = {prof.lr_star:.3g}, one-step loss fraction {prof.one_step_fraction:.3f}, "
        f"R^2 of the quadratic fit {prof.fit.r2:.4f}"
    )

    # 3. average after the fact from the stored snapshots (streamed from disk)
    avg = post_hoc(run, TwoPoint(gap_steps=32), at_step=step, every_steps=32)
    result = run.evaluate(avg)  # BatchNorm recalibrated, then the test set
    print(f"two-point average at step {step}: test acc {result.acc:.4f} (BN {result.bn})")

    # 4. theory: the constant-lr run whose last iterate equals an EMA, in the noisy quadratic model
    nqm = NoisyQuadratic(curvatures=[0.5], noise=[1.0], lr=0.1)
    lrs = equivalent_schedule(EMA(decay=0.999), lr=0.1, curvature=0.5, steps=5000)
    print(
        f"EMA(0.999) at lr 0.1 ~ a schedule ending at lr {lrs[-1]:.2g}; "
        f"stationary excess loss of plain SGD {nqm.excess_loss():.4g}"
    )


if __name__ == "__main__":
    main()
