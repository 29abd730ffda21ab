"""Record a Lightning run with trajlab: snapshots, the exact batch of every step, three EMAs and a two-point
average kept online and validated in Lightning's validation loop; then the CLI works on the run.

    python examples/lightning_trajectory.py --out runs/lit            # ~1 min on 2 cores
    python examples/lightning_trajectory.py --tiny --out runs/lit     # seconds
    trajlab runs verify runs/lit && trajlab average runs/lit --ema 0.99
    trajlab probe runs/lit --line && trajlab report runs/lit --out runs/lit/report.html

Needs ``pip install trajlab[lightning]``. The factories below are module-level functions, so the run
records them as ``examples/lightning_trajectory.py:make_model`` (and ``make_data``, ``loss_fn``) and the
commands rebuild the model and the data with no extra flags.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trajlab.averaging import EMA, TwoPoint
from trajlab.integrations.lightning import TrajectoryCallback


def make_data(n: int = 4096) -> tuple[TensorDataset, TensorDataset]:
    """Your datasets, ``(train, eval)``: 20 features, 4 classes."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 20, generator=g)
    y = (x[:, :2].sum(1) > 0).long() + 2 * (x[:, 2] > 0).long()
    cut = n * 7 // 8
    return TensorDataset(x[:cut], y[:cut]), TensorDataset(x[cut:], y[cut:])


class Classifier(pl.LightningModule):
    """A small MLP with BatchNorm (so the averages need their BN statistics recalibrated)."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(nn.Linear(20, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:  # noqa: ANN001
        loss = loss_fn(self, batch)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:  # noqa: ANN001
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def make_model() -> Classifier:
    """Your model (the LightningModule itself is an ``nn.Module``)."""
    return Classifier()


def loss_fn(model: nn.Module, batch) -> torch.Tensor:  # noqa: ANN001
    """Your loss as ``loss_fn(model, batch)``: what trajlab's probes and BN recalibration call."""
    x, y = batch
    return F.cross_entropy(model(x), y)


def train(
    out: str | Path, *, tiny: bool = False, epochs: int | None = None, ckpt_path: str | None = None
) -> Path:
    """Fit the classifier with the trajectory callback into ``out``; returns the run directory."""
    torch.manual_seed(0)
    lightning_dir = Path(f"{out}-lightning")  # Lightning's checkpoints and logs, next to the run
    train_set, eval_set = make_data(1024 if tiny else 4096)
    callback = TrajectoryCallback(
        out,
        loss_fn=loss_fn,
        averages=[EMA(0.9), EMA(0.99), EMA(0.999), TwoPoint(40)],
        snapshots=5,
        model_factory=make_model,
        data_factory=make_data,
        bn_batches=8,
        log_every_steps=5,
    )
    trainer = pl.Trainer(
        max_epochs=epochs or (2 if tiny else 10),
        callbacks=[callback],
        default_root_dir=str(lightning_dir),
        accelerator="cpu",
        logger=pl.loggers.CSVLogger(str(lightning_dir), name="logs"),
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(
        make_model(),
        DataLoader(train_set, batch_size=64, shuffle=True),
        DataLoader(eval_set, batch_size=256),
        ckpt_path=ckpt_path,
    )
    metrics = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items() if "val" in k}
    print(f"recorded {out}; validation: {metrics}")
    return Path(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/lightning-trajectory")
    parser.add_argument("--tiny", action="store_true", help="1024 examples, 2 epochs, one thread: seconds")
    args = parser.parse_args()
    if args.tiny:
        torch.set_num_threads(1)
    train(args.out, tiny=args.tiny)


if __name__ == "__main__":
    main()
