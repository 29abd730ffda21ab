"""One rank of a 2-process Lightning DDP run (gloo, CPU) under torchrun, recorded by the callback; each
rank saves the batches its training steps saw, for the parent test to compare with the batch log."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lit_fixtures import Capture, Module, loss_fn, make_data, make_model
from torch.utils.data import DataLoader

from trajlab.averaging import EMA, TwoPoint
from trajlab.integrations.lightning import TrajectoryCallback

if __name__ == "__main__":
    torch.set_num_threads(1)
    out, seen = Path(sys.argv[1]), sys.argv[2]
    torch.manual_seed(0)
    train, test = make_data()
    capture = Capture()
    callback = TrajectoryCallback(
        out,
        loss_fn=loss_fn,
        averages=[EMA(0.9), TwoPoint(4)],
        snapshots=2,
        model_factory=make_model,
        data_factory=make_data,
        bn_batches=2,
        log_every_steps=1,
        tensorboard=False,
    )
    trainer = pl.Trainer(
        max_epochs=2,
        callbacks=[callback, capture],
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    module: Module = make_model()
    trainer.fit(module, DataLoader(train, batch_size=32, shuffle=True), DataLoader(test, batch_size=25))
    torch.save(capture.batches, f"{seen}.rank{trainer.global_rank}.pt")
    averages = callback.recording.state_dict()["callbacks"]["averaging"]["averaged"]["averages"]
    torch.save(averages["ema_0.9"]["average"], f"{seen}.ema.rank{trainer.global_rank}.pt")
