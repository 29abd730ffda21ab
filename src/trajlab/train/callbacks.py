"""The callback interface through which recording, averaging and probes plug into training.

The training engine knows nothing of them: it calls these hooks with a typed context. Step
numbering convention used everywhere in trajlab:

* ``theta_0`` is the initial model; **step t** (t = 1, 2, ...) trains on batch ``B_t`` and produces
  ``theta_t``. ``on_train_start`` sees ``step = 0`` (``theta_0``); ``on_step`` sees ``step = t`` right
  after the optimizer update that produced ``theta_t``, with ``batch_indices`` = the indices of ``B_t``.
* ``lr`` in the context is the learning rate that was used for step t.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

# evaluate(model) -> {"loss": float, "acc": float}; runs the test set in eval mode, never trains.
EvaluateFn = Callable[[nn.Module], dict[str, float]]
# train_batches(max_batches) -> iterator of (x, y) training batches on the model's device, e.g. for
# BatchNorm recalibration. Deterministic (seeded), independent of the training sampler's position.
TrainBatchesFn = Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]


@dataclass
class StepContext:
    """Everything a callback may read at a hook. Callbacks must not keep references to tensors in it.

    Attributes:
        step: number of optimizer updates done so far (0 in ``on_train_start``).
        epoch: float epoch position, ``step * global_batch_size / n_train``.
        lr: learning rate used for this step (the schedule's value at ``step``).
        batch_indices: int64 tensor [global_batch] of training-set indices of ``B_step`` (CPU);
            empty at step 0.
        aug_seed: the per-step augmentation seed used to build ``B_step`` (-1 at step 0).
        loss: 0-d tensor, mean loss of this rank's part of ``B_step`` before the update (no host sync
            is forced; call ``.item()`` only when you need it). ``None`` at step 0.
        model: the live model (unwrapped: never the DDP/compile wrapper).
        optimizer: the optimizer.
        total_steps: planned number of steps in the run.
        rank / world_size: distributed position (0 / 1 without DDP).
        device: the device training runs on.
        evaluate: test-set evaluation of any model with the same architecture.
        train_batches: deterministic training batches (for BN recalibration).
        trainer_state: returns the engine's full resumable state (see ``Trainer.state_dict``):
            ``{"step", "model", "optimizer", "rng", "callbacks": {name: state}, ...}``; tensors, numbers,
            strings, lists and dicts only, so it can be saved and loaded with ``weights_only=True``.
        is_resumed_start: True in ``on_train_start`` when the run continues from a checkpoint.
    """

    step: int
    epoch: float
    lr: float
    batch_indices: torch.Tensor
    aug_seed: int
    loss: torch.Tensor | None
    model: nn.Module
    optimizer: torch.optim.Optimizer
    total_steps: int
    device: torch.device
    evaluate: EvaluateFn
    train_batches: TrainBatchesFn
    trainer_state: Callable[[], dict[str, Any]] = dict
    is_resumed_start: bool = False
    rank: int = 0
    world_size: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Callback(Protocol):
    """A training callback. All hooks are optional; implement the ones you need.

    * ``on_train_start(ctx)``: once, before the first step (``ctx.step`` is 0, or the resumed step).
    * ``on_step(ctx)``: after every optimizer update.
    * ``on_eval(ctx) -> dict``: at every evaluation; returns extra metrics (flat ``name -> float``)
      that the engine logs next to the live model's test metrics (e.g. ``"ema_0.999/test_acc"``).
    * ``on_step_end(ctx)``: after ``on_step`` of every callback and after this step's logging and
      evaluation; checkpointing belongs here, so a checkpoint at step t includes everything of step t.
    * ``on_train_end(ctx)``: once, after the last step (also when the run stops on divergence).
    * ``state_dict() / load_state_dict(state)``: callback state for exact resume (tensors, numbers,
      strings, lists and dicts only: it is saved without pickle).
    """

    name: str


class CallbackBase:
    """Convenience base class with no-op hooks."""

    name: str = "callback"

    def on_train_start(self, ctx: StepContext) -> None:
        pass

    def on_step(self, ctx: StepContext) -> None:
        pass

    def on_eval(self, ctx: StepContext) -> dict[str, float]:
        return {}

    def on_step_end(self, ctx: StepContext) -> None:
        pass

    def on_train_end(self, ctx: StepContext) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
