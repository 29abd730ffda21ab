"""A user's own training loop, as tests (and their subprocesses) run it: factories, loss hooks, the loop."""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import trajlab
from trajlab.averaging import EMA, TwoPoint


def make_data() -> tuple[TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return TensorDataset(x[:250], y[:250]), TensorDataset(x[250:], y[250:])


def make_model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 2))


def loss_fn(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


class DictData(Dataset):
    """The Hugging Face shape: each item a dict with ``labels``."""

    def __init__(self, base: TensorDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x, y = self.base[i]
        return {"inputs": x, "labels": y}


def make_dict_data() -> dict[str, DictData]:
    train, test = make_data()
    return {"train": DictData(train), "eval": DictData(test)}


class DictModel(nn.Module):
    """A model called as ``model(**batch)`` returning an object with ``loss`` and ``logits``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = make_model()

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor | None = None):  # noqa: ANN201
        logits = self.net(inputs)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return type("Out", (), {"loss": loss, "logits": logits})()


def make_dict_model() -> nn.Module:
    return DictModel()


def dict_loss(model: nn.Module, batch) -> torch.Tensor:
    return model(**batch).loss


def jitter(sample, generator: torch.Generator):  # noqa: ANN001, ANN201 - a SeededAugmentation transform
    x, y = sample
    return x + 0.1 * torch.randn(x.shape, generator=generator), y


def make_seeded_data() -> tuple[trajlab.SeededAugmentation, TensorDataset]:
    train, test = make_data()
    return trajlab.SeededAugmentation(train, jitter), test


def run_loop(
    out: str,
    *,
    stop_at: int | None = None,
    epochs: int = 3,
    batch_size: int = 32,
    drop_last: bool = False,
    num_workers: int = 0,
    seen: list | None = None,
    accumulate: int = 1,
    data=make_data,
    checkpoint_every_steps: int = 4,
    announce: bool = False,
):  # noqa: ANN201
    """Train 3 epochs with the recorder; ``seen`` collects every batch the loop got."""
    torch.manual_seed(0)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
    train, _ = data()
    loader = DataLoader(
        train, batch_size=batch_size, shuffle=True, drop_last=drop_last, num_workers=num_workers
    )
    with trajlab.record(
        out,
        model,
        opt,
        loss_fn=loss_fn,
        snapshots=1,
        averages=[EMA(0.9), TwoPoint(4)],
        checkpoint_every_steps=checkpoint_every_steps,
        schedulers=[sched],
        model_factory=make_model,
        data_factory=data,
        log_every_steps=1,
    ) as rec:
        for i, batch in enumerate(rec.batches(loader, epochs=epochs)):
            if seen is not None:
                seen.append(batch)
            loss = loss_fn(model, batch) / accumulate
            loss.backward()
            if (i + 1) % accumulate == 0:
                opt.step()
                opt.zero_grad()
                sched.step()
            rec.log(train_loss=loss)
            if announce:
                print(f"step {rec.step}", flush=True)
            if stop_at is not None and rec.step == stop_at:
                raise SystemExit(3)
    return rec


if __name__ == "__main__":  # the subprocess of the kill test: print each step, so the parent knows when
    torch.set_num_threads(1)
    run_loop(sys.argv[1], announce=True)
    print("done", flush=True)
