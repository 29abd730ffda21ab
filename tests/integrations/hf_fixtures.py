"""A tiny Hugging Face Trainer run for the integration tests: a 1-layer BERT from a config (no download),
dict batches with ``labels``, and fit()."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from torch.utils.data import Dataset

from trajlab.averaging import EMA, TwoPoint
from trajlab.integrations.hf import TrajectoryCallback


class Tokens(Dataset):
    """Sequences of 12 token ids; the label says whether token 7 occurs (dict items, the HF shape)."""

    def __init__(self, ids: torch.Tensor) -> None:
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = self.ids[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": (ids == 7).any().long()}


def make_data() -> tuple[Tokens, Tokens]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 40, (240, 12), generator=g)
    return Tokens(ids[:200]), Tokens(ids[200:])


def make_model() -> transformers.PreTrainedModel:
    torch.manual_seed(1)
    config = transformers.BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
    )
    return transformers.BertForSequenceClassification(config)


AVERAGES = (EMA(0.9), EMA(0.5), TwoPoint(4))


class Capture(transformers.TrainerCallback):
    """The weights after every optimizer step, and the inputs of every training forward."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []
        self.inputs: list[dict[str, torch.Tensor]] = []
        self._hooked = False

    def on_train_begin(self, args, state, control, model=None, **kwargs) -> None:  # noqa: ANN001
        if not self._hooked:
            model.register_forward_pre_hook(self._record, with_kwargs=True)
            self._hooked = True

    def _record(self, module, args, kwargs) -> None:  # noqa: ANN001
        if module.training and torch.is_grad_enabled():
            self.inputs.append({k: v.clone() for k, v in kwargs.items() if isinstance(v, torch.Tensor)})

    def on_step_end(self, args, state, control, model=None, **kwargs) -> None:  # noqa: ANN001
        self.weights.append({k: p.detach().clone() for k, p in model.named_parameters()})


class Crash(transformers.TrainerCallback):
    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_step_end(self, args, state, control, **kwargs) -> None:  # noqa: ANN001
        if state.global_step == self.at_step:
            raise RuntimeError("simulated crash")


def make_callback(out: Path, averages: tuple | list, snapshots: int) -> TrajectoryCallback:
    """The recorder callback of these tests: the fixtures' factories, dict batches, no TensorBoard."""
    return TrajectoryCallback(
        out,
        averages=averages,
        snapshots=snapshots,
        model_factory=make_model,
        data_factory=make_data,
        collate_fn=transformers.default_data_collator,
        bn_batches=2,
        log_every_steps=1,
        tensorboard=False,
    )


def fit(
    out: Path, *, epochs: int = 3, extra: tuple = (), resume: str | None = None, accumulate: int = 1
) -> TrajectoryCallback:
    train, test = make_data()
    callback = make_callback(out, AVERAGES, snapshots=1)
    args = transformers.TrainingArguments(
        output_dir=str(out) + "-hf",
        per_device_train_batch_size=32,
        per_device_eval_batch_size=40,
        gradient_accumulation_steps=accumulate,
        num_train_epochs=epochs,
        learning_rate=1e-2,
        eval_strategy="steps",
        eval_steps=5,
        save_strategy="steps",
        save_steps=5,
        logging_steps=5,
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = transformers.Trainer(
        model=make_model(), args=args, train_dataset=train, eval_dataset=test, callbacks=list(extra)
    )
    callback.attach(trainer)
    try:
        trainer.train(resume_from_checkpoint=resume)
    except Exception as e:
        callback.close(e)
        raise
    return callback
