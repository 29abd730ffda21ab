"""One rank of a 2-process Hugging Face Trainer run (DDP over gloo, CPU) under torchrun, recorded by the
callback; each rank saves the inputs its training steps saw and its EMA, for the parent test to compare
with the batch log."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import transformers
from hf_fixtures import Capture, make_callback, make_data, make_model

from trajlab.averaging import EMA, TwoPoint

if __name__ == "__main__":
    torch.set_num_threads(1)
    out, seen = Path(sys.argv[1]), sys.argv[2]
    train, test = make_data()
    capture = Capture()
    callback = make_callback(out, [EMA(0.9), TwoPoint(4)], snapshots=2)
    args = transformers.TrainingArguments(
        output_dir=str(out) + "-hf",
        per_device_train_batch_size=16,
        per_device_eval_batch_size=20,
        num_train_epochs=2,
        learning_rate=1e-2,
        eval_strategy="steps",
        eval_steps=4,
        save_strategy="no",
        logging_steps=4,
        report_to="none",
        use_cpu=True,
        ddp_backend="gloo",
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = transformers.Trainer(
        model=make_model(), args=args, train_dataset=train, eval_dataset=test, callbacks=[capture]
    )
    callback.attach(trainer)
    try:
        trainer.train()
    except Exception as e:
        callback.close(e)
        raise
    rank = trainer.args.process_index
    torch.save(capture.inputs, f"{seen}.rank{rank}.pt")
    averages = callback.recording.state_dict()["callbacks"]["averaging"]["averaged"]["averages"]
    torch.save(averages["ema_0.9"]["average"], f"{seen}.ema.rank{rank}.pt")
