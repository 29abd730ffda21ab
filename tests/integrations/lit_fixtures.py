"""A tiny Lightning run for the integration tests: factories, a module with BatchNorm and dropout, fit()."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trajlab.averaging import EMA, TwoPoint
from trajlab.integrations.lightning import TrajectoryCallback


def make_data() -> tuple[TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return TensorDataset(x[:250], y[:250]), TensorDataset(x[250:], y[250:])


def loss_fn(model: nn.Module, batch) -> torch.Tensor:  # noqa: ANN001
    x, y = batch
    return F.cross_entropy(model(x), y)


class Module(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Sequential(
            nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:  # noqa: ANN001
        return loss_fn(self, batch)

    def validation_step(self, batch, batch_idx: int) -> None:  # noqa: ANN001
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):  # noqa: ANN201
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def make_model() -> Module:
    return Module()


AVERAGES = (EMA(0.9), EMA(0.5), TwoPoint(4))


class Capture(pl.Callback):
    """The weights after every optimizer step and the batch of every step, as the framework saw them."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []
        self.batches: list = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        self.batches.append([t.clone() for t in batch])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.weights.append({k: p.detach().clone() for k, p in pl_module.named_parameters()})


class Crash(pl.Callback):
    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step == self.at_step:
            raise RuntimeError("simulated crash")


def fit(
    out: Path,
    *,
    epochs: int = 3,
    extra: tuple = (),
    ckpt_path: str | None = None,
    checkpoint_every: int = 5,
) -> TrajectoryCallback:
    torch.manual_seed(0)
    train, test = make_data()
    callback = TrajectoryCallback(
        out,
        loss_fn=loss_fn,
        averages=AVERAGES,
        snapshots=1,
        model_factory=make_model,
        data_factory=make_data,
        bn_batches=2,
        log_every_steps=1,
        tensorboard=False,
    )
    saver = pl.callbacks.ModelCheckpoint(
        dirpath=str(out) + "-ckpt", every_n_train_steps=checkpoint_every, save_top_k=-1, filename="{step}"
    )
    trainer = pl.Trainer(
        max_epochs=epochs,
        callbacks=[callback, saver, *extra],
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(
        make_model(),
        DataLoader(train, batch_size=32, shuffle=True),
        DataLoader(test, batch_size=50),
        ckpt_path=ckpt_path,
    )
    return callback
