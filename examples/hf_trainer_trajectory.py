"""Record a Hugging Face Trainer run with trajlab: snapshots, the exact batch of every step, three EMAs and a
two-point average kept online and evaluated by the Trainer's own ``evaluate()``; then the CLI works on it.

    python examples/hf_trainer_trajectory.py --out runs/hf            # ~1 min on 2 cores
    python examples/hf_trainer_trajectory.py --tiny --out runs/hf     # seconds
    trajlab runs verify runs/hf && trajlab average runs/hf --ema 0.99
    trajlab probe runs/hf --line && trajlab report runs/hf --out runs/hf/report.html

Needs ``pip install trajlab[hf]``. The model is a 2-layer BERT built from a config (nothing is
downloaded); batches are dicts with ``labels`` (the Hugging Face shape), and the loss hook is
``trajlab.integrations.hf.hf_loss`` (``model(**batch).loss``). The Trainer's own files (checkpoints with
the recording's state inside, logs) go to ``OUT-hf``, next to the run.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch
import transformers
from torch.utils.data import Dataset

from trajlab.averaging import EMA, TwoPoint
from trajlab.integrations.hf import TrajectoryCallback


class Tokens(Dataset):
    """Your dataset: sequences of 16 token ids; the label says whether token 7 occurs in the sequence."""

    def __init__(self, ids: torch.Tensor) -> None:
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = self.ids[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": (ids == 7).any().long()}


def make_data(n: int = 4096) -> tuple[Tokens, Tokens]:
    """Your datasets, ``(train, eval)``."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 64, (n, 16), generator=g)
    cut = n * 7 // 8
    return Tokens(ids[:cut]), Tokens(ids[cut:])


def make_model() -> transformers.PreTrainedModel:
    """Your model, from a config: no download."""
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
        # trajlab's probes differentiate twice (Hessian-vector products); torch's fused CPU attention
        # kernel has no double backward, the eager one has.
        attn_implementation="eager",
    )
    return transformers.BertForSequenceClassification(config)


def train(out: str | Path, *, tiny: bool = False) -> Path:
    """Train with the trajectory callback into ``out``; returns the run directory."""
    torch.manual_seed(0)
    train_set, eval_set = make_data(1024 if tiny else 4096)
    callback = TrajectoryCallback(
        out,
        averages=[EMA(0.9), EMA(0.99), EMA(0.999), TwoPoint(40)],
        snapshots=5,
        model_factory=make_model,
        data_factory=make_data,
        collate_fn=transformers.default_data_collator,
        log_every_steps=5,
    )
    tensorboard = importlib.util.find_spec("tensorboard") is not None
    args = transformers.TrainingArguments(
        output_dir=f"{out}-hf",
        per_device_train_batch_size=64,
        per_device_eval_batch_size=256,
        num_train_epochs=2 if tiny else 10,
        learning_rate=3e-3,
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_steps=5,
        report_to=["tensorboard"] if tensorboard else "none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(
        model=make_model(), args=args, train_dataset=train_set, eval_dataset=eval_set
    )
    callback.attach(trainer)
    try:
        trainer.train()
    except (
        Exception
    ) as e:  # the run stays unfinished; trainer.train(resume_from_checkpoint=True) continues it
        callback.close(e)
        raise
    last = [row for row in trainer.state.log_history if "eval_loss" in row][-1]
    losses = {k: round(v, 4) for k, v in last.items() if k.endswith("_loss")}
    print(f"recorded {out}; last evaluation: {losses}")
    return Path(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/hf-trainer-trajectory")
    parser.add_argument("--tiny", action="store_true", help="1024 examples, 2 epochs, one thread: seconds")
    args = parser.parse_args()
    if args.tiny:
        torch.set_num_threads(1)
    train(args.out, tiny=args.tiny)


if __name__ == "__main__":
    main()
