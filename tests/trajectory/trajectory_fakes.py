"""A tiny deterministic training loop that calls callbacks like ``trajlab.train.engine.Trainer`` does.

Tests of ``trajlab.trajectory`` use it so they do not depend on the engine; ``crash_trainer`` is the run
the crash test kills and resumes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trajlab.train.callbacks import StepContext
from trajlab.trajectory import Checkpointer, Recorder, load_latest_checkpoint

N_TRAIN = 64
BATCH = 8
IMAGE = (1, 6, 6)


def tiny_model(seed: int = 0) -> nn.Module:
    """Conv + BatchNorm (so there are buffers, num_batches_tracked included) + linear head; 3 classes."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3),
    )


def dataset() -> tuple[torch.Tensor, torch.Tensor]:
    """x [64, 1, 6, 6] float32, y [64] int64 (fixed seed)."""
    gen = torch.Generator().manual_seed(123)
    return torch.randn(N_TRAIN, *IMAGE, generator=gen), torch.randint(0, 3, (N_TRAIN,), generator=gen)


def batch_indices(step: int) -> torch.Tensor:
    """B_step: int64 [8], a deterministic function of the step."""
    return torch.randperm(N_TRAIN, generator=torch.Generator().manual_seed(step))[:BATCH]


def aug_seed(step: int) -> int:
    return 1000 + 7 * step


def make_batch(
    x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor, seed: int
) -> tuple[torch.Tensor, ...]:
    """A stand-in augmentation: sign flips drawn from ``seed``."""
    signs = (
        torch.randint(0, 2, (len(indices), 1, 1, 1), generator=torch.Generator().manual_seed(seed)) * 2 - 1
    )
    return x[indices] * signs, y[indices]


def lr_at(step: int) -> float:
    return 0.1 / (1 + 0.01 * step)


class FakeTrainer:
    """SGD on the tiny model; hooks in the engine's order (on_step, on_step_end); exact resume on CPU."""

    def __init__(self, callbacks: list[Any], total_steps: int, *, rank: int = 0, slow_s: float = 0.0) -> None:
        self.model = tiny_model()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        self.callbacks = callbacks
        self.total_steps = total_steps
        self.rank = rank
        self.slow_s = slow_s
        self.step = 0
        self.resumed = False
        self.x, self.y = dataset()
        self.captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "model": {k: v.clone() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "callbacks": {cb.name: cb.state_dict() for cb in self.callbacks},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        for cb in self.callbacks:
            cb.load_state_dict(state["callbacks"].get(cb.name, {}))
        self.resumed = True

    def context(self, step: int, indices: torch.Tensor, seed: int, loss: torch.Tensor | None) -> StepContext:
        return StepContext(
            step=step,
            epoch=step * BATCH / N_TRAIN,
            lr=lr_at(max(step, 1)),
            batch_indices=indices,
            aug_seed=seed,
            loss=loss,
            model=self.model,
            optimizer=self.optimizer,
            total_steps=self.total_steps,
            device=torch.device("cpu"),
            evaluate=lambda m: {"loss": 0.0, "acc": 0.0},
            train_batches=lambda n: iter(()),
            trainer_state=self.state_dict,
            is_resumed_start=False,
            rank=self.rank,
        )

    def call(self, hook: str, ctx: StepContext) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(ctx)

    def fit(self, stop_after: int | None = None) -> None:
        ctx = self.context(self.step, torch.empty(0, dtype=torch.int64), -1, None)
        ctx.is_resumed_start = self.resumed
        self.call("on_train_start", ctx)
        try:
            while self.step < self.total_steps and (stop_after is None or self.step < stop_after):
                step = self.step + 1
                indices, seed = batch_indices(step), aug_seed(step)
                xb, yb = make_batch(self.x, self.y, indices, seed)
                self.captured[step] = (xb, yb)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr_at(step)
                self.model.train()
                loss = F.cross_entropy(self.model(xb), yb)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.step = step
                ctx = self.context(step, indices, seed, loss.detach())
                self.call("on_step", ctx)
                self.call("on_step_end", ctx)
                if self.slow_s:
                    time.sleep(self.slow_s)
        finally:
            self.call("on_train_end", self.context(self.step, torch.empty(0, dtype=torch.int64), -1, None))


def recording_trainer(
    run_dir: Path,
    total_steps: int,
    *,
    schedule: dict[str, Any] | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    slow_s: float = 0.0,
    **recorder_kwargs: Any,
) -> FakeTrainer:
    """A FakeTrainer with a Recorder (and a Checkpointer), resumed from RUN's latest checkpoint if asked."""
    callbacks: list[Any] = [Recorder(run_dir, schedule or {"every_steps": 1}, **recorder_kwargs)]
    if checkpoint_every:
        callbacks.append(Checkpointer(run_dir, checkpoint_every, keep=2))
    trainer = FakeTrainer(callbacks, total_steps, slow_s=slow_s)
    if resume:
        state = load_latest_checkpoint(run_dir)
        if state is not None:
            trainer.load_state_dict(state)
    return trainer


CRASH_RUN = {"total_steps": 40, "checkpoint_every": 5, "chunk_steps": 16, "schedule": {"every_steps": 1}}


def crash_trainer(run_dir: Path, *, resume: bool, extra: list[Any] = ()) -> FakeTrainer:  # type: ignore[assignment]
    """The run the crash test kills and resumes (and runs uninterrupted as the reference)."""
    callbacks: list[Any] = [Recorder(run_dir, CRASH_RUN["schedule"], chunk_steps=CRASH_RUN["chunk_steps"])]
    callbacks += list(extra)
    callbacks.append(Checkpointer(run_dir, CRASH_RUN["checkpoint_every"], keep=2))
    trainer = FakeTrainer(callbacks, CRASH_RUN["total_steps"])
    state = load_latest_checkpoint(run_dir) if resume else None
    if state is not None:
        trainer.load_state_dict(state)
    elif resume and run_dir.exists():
        # Killed before its first checkpoint: nothing to resume, start over (as a user would).
        import shutil

        shutil.rmtree(run_dir)
    return trainer
