"""The training loop: the imperative shell around model, optimizer, batches and callbacks.

One step t (t = 1 .. total_steps):
    lr_t = lr_at(t); (x, y) = B_t (this rank's rows of the global batch); loss = loss_fn(model(x), y)
    backward; optimizer.step() with lr_t  ->  theta_t
    callbacks.on_step(ctx); log every ``log_every_steps``; evaluate every ``eval_every_steps`` (and at the
    end; callbacks' ``on_eval`` add metrics); callbacks.on_step_end(ctx) (checkpoints).

The loop never forces a host sync per step on an accelerator: the loss is accumulated on the device
and read at log steps only. On CPU the loss is checked every step (it costs nothing there), so a
divergence stops the run at the step where it happened.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from trajlab.train import distributed
from trajlab.train.callbacks import CallbackBase, StepContext

log = logging.getLogger(__name__)

MetricsSink = Callable[[dict[str, Any]], None]


class RankFailed(RuntimeError):
    """Another rank of a distributed run failed (its writer, a callback); this rank stops with it."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message says at which step and what to change."""


class BatchSource(Protocol):
    """Where training batches come from (see :class:`trajlab.runs.build.DatasetBatches`)."""

    global_batch_size: int
    steps_per_epoch: int

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """(x, y) of this rank's rows of B_step on the device, the global indices (CPU int64), aug seed."""
        ...

    def epoch_of(self, step: int) -> float: ...

    def recalibration_batches(self, max_batches: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


@dataclass
class TrainResult:
    steps_done: int
    final_metrics: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0


class Trainer:
    """Runs the training loop for ``total_steps`` steps, calling callbacks at the hooks.

    Args:
        model: the unwrapped model (what callbacks see and what is saved).
        optimizer: any torch optimizer; its param groups' ``lr`` is set from ``lr_at`` every step.
        lr_at: the schedule, ``step -> lr``.
        batches: a :class:`BatchSource`.
        evaluate: ``evaluate(model) -> {"loss", "acc"}`` on the test set.
        total_steps: number of optimizer steps of the whole run.
        eval_every_steps: evaluation period (0 = once per epoch); the last step is always evaluated.
        log_every_steps: period of train-loss rows in the metrics.
        callbacks: objects with the hooks of :class:`CallbackBase`, called in order.
        metrics_sink: receives every metrics row (a flat dict with ``kind`` = ``train`` or ``eval``).
        train_model: the module to run forward/backward through (a DDP wrapper); default ``model``.
        device: where training runs.
        autocast_dtype: e.g. ``torch.bfloat16`` on CUDA; None for full precision.
        loss_fn: ``loss_fn(logits, y) -> scalar``; cross-entropy by default.
        rank, world_size: distributed position; only rank 0 evaluates and shows progress.
        progress: show a tqdm bar (rank 0 only).
        reduce_loss: ``reduce_loss(t) -> t`` averaging a 0-d tensor over ranks (identity without DDP).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_at: Callable[[int], float],
        batches: BatchSource,
        evaluate: Callable[[nn.Module], dict[str, float]],
        *,
        total_steps: int,
        eval_every_steps: int = 0,
        log_every_steps: int = 20,
        callbacks: Sequence[Any] = (),
        metrics_sink: MetricsSink | None = None,
        train_model: nn.Module | None = None,
        device: torch.device | str = "cpu",
        autocast_dtype: torch.dtype | None = None,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
        rank: int = 0,
        world_size: int = 1,
        progress: bool = True,
        reduce_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if total_steps <= 0:
            raise ValueError(f"total_steps must be > 0, got {total_steps}")
        self.model = model
        self.train_model = train_model if train_model is not None else model
        self.optimizer = optimizer
        self.lr_at = lr_at
        self.batches = batches
        self.evaluate = evaluate
        self.total_steps = total_steps
        self.eval_every_steps = eval_every_steps or max(batches.steps_per_epoch, 1)
        self.log_every_steps = log_every_steps
        self.callbacks = list(callbacks)
        names = [getattr(cb, "name", type(cb).__name__) for cb in self.callbacks]
        if len(set(names)) != len(names):
            raise ValueError(f"callback names must be unique, got {names}")
        self.metrics_sink = metrics_sink or (lambda row: None)
        self.device = torch.device(device)
        self.autocast_dtype = autocast_dtype
        self.loss_fn = loss_fn
        self.rank = rank
        self.world_size = world_size
        self.progress = progress and rank == 0
        self.reduce_loss = reduce_loss or (lambda t: t)
        self.step = 0
        self.resumed = False
        # Loss accumulated since the last train row (on the device: no host sync per step).
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._loss_count = 0
        self._check_every_step = self.device.type == "cpu" and world_size == 1

    # ------------------------------------------------------------------ state for exact resume
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically on CPU (tensors, numbers, dicts only)."""
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "format": "trajlab-trainer-state",
            "version": 1,
            "step": self.step,
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "rng": rng,
            "loss_sum": self._loss_sum.detach().clone().cpu(),
            "loss_count": self._loss_count,
            "callbacks": {
                self._name(cb): cb.state_dict() for cb in self.callbacks if hasattr(cb, "state_dict")
            },
        }

    def load_state_dict(self, state: dict[str, Any], *, branch: bool = False) -> None:
        """Continue from ``state``. ``branch=True`` starts a *new* run from it (model, optimizer, RNG and
        step are taken; callbacks and the loss accumulator start fresh, as in a new run)."""
        if state.get("format") != "trajlab-trainer-state":
            raise ValueError("not a trajlab training checkpoint (format field missing)")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.step = int(state["step"])
        if branch:
            return
        self._loss_sum = state["loss_sum"].to(self.device)
        self._loss_count = int(state["loss_count"])
        saved = state.get("callbacks", {})
        for cb in self.callbacks:
            name = self._name(cb)
            if name in saved and hasattr(cb, "load_state_dict"):
                cb.load_state_dict(saved[name])
        self.resumed = True

    # ------------------------------------------------------------------ the loop
    def fit(self) -> TrainResult:
        t_start = time.perf_counter()
        bar = self._progress_bar()
        ctx = self._context(self.step, None, torch.empty(0, dtype=torch.int64), -1)
        ctx.is_resumed_start = self.resumed
        self._call("on_train_start", ctx)
        final: dict[str, Any] = {}
        t_log, steps_since_log = time.perf_counter(), 0
        try:
            while self.step < self.total_steps:
                step = self.step + 1
                lr = float(self.lr_at(step))
                loss = self._train_step(step, lr)
                self.step = step
                steps_since_log += 1
                ctx = self._context(step, loss, self._last_indices, self._last_seed, lr=lr)
                # Callbacks (writers) run inside _guarded: a failure on any rank stops every rank at the
                # same point, before the next collective (the train row's loss reduction is one).
                self._guarded(step, self._call, "on_step", ctx)
                if step % self.log_every_steps == 0 or step == self.total_steps:
                    now = time.perf_counter()
                    row = self._train_row(step, lr, steps_since_log, now - t_log, now - t_start)
                    t_log, steps_since_log = now, 0
                    if bar is not None:
                        bar.set_postfix(loss=f"{row['train_loss']:.4f}", img_s=f"{row['images_per_s']:.0f}")
                final = self._guarded(step, self._eval_and_end, ctx, t_start) or final
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            end_ctx = self._context(self.step, None, torch.empty(0, dtype=torch.int64), -1)
            self._call("on_train_end", end_ctx)
        return TrainResult(steps_done=self.step, final_metrics=final, wall_s=time.perf_counter() - t_start)

    def _eval_and_end(self, ctx: StepContext, t_start: float) -> dict[str, Any] | None:
        """The eval row when this step evaluates (else ``None``), then every callback's ``on_step_end``."""
        row = None
        if ctx.step % self.eval_every_steps == 0 or ctx.step == self.total_steps:
            row = self._eval_row(ctx, time.perf_counter() - t_start)
        self._call("on_step_end", ctx)
        return row

    def _guarded(self, step: int, work: Callable[..., Any], *args: Any) -> Any:
        """``work(*args)``; under DDP every rank then agrees (one all-reduce) whether any rank failed."""
        failed: Exception | None = None
        result = None
        try:
            result = work(*args)
        except Exception as e:  # every rank hears of it before anyone waits in a collective
            failed = e
        elsewhere = self.world_size > 1 and distributed.any_rank_failed(failed is not None)
        if failed is not None:
            raise failed
        if elsewhere:
            raise RankFailed(f"another rank failed at step {step} (its error is in its log)")
        return result

    def _train_step(self, step: int, lr: float) -> torch.Tensor:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, y, indices, aug_seed = self.batches.batch(step)
        self._last_indices, self._last_seed = indices, aug_seed
        self.train_model.train()
        with self._autocast():
            logits = self.train_model(x)
            loss = self.loss_fn(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        loss = loss.detach()
        if self._check_every_step and not math.isfinite(loss.item()):
            self._diverged(step, lr, loss.item())
        self._loss_sum += loss
        self._loss_count += 1
        return loss

    def _train_row(
        self, step: int, lr: float, steps: int, interval_s: float, wall_s: float
    ) -> dict[str, Any]:
        mean = self.reduce_loss(self._loss_sum / max(self._loss_count, 1)).item()
        self._loss_sum.zero_()
        self._loss_count = 0
        if not math.isfinite(mean):
            self._diverged(step, lr, mean)
        row = {
            "kind": "train",
            "step": step,
            "epoch": round(self.batches.epoch_of(step), 6),
            "lr": lr,
            "train_loss": mean,
            "images_per_s": steps * self.batches.global_batch_size / max(interval_s, 1e-9),
            "wall_s": wall_s,
        }
        if self.rank == 0:
            self.metrics_sink(row)
        return row

    def _eval_row(self, ctx: StepContext, wall_s: float) -> dict[str, Any]:
        if self.rank != 0:
            return {}
        metrics = self.evaluate(self.model)
        row: dict[str, Any] = {
            "kind": "eval",
            "step": ctx.step,
            "epoch": round(ctx.epoch, 6),
            "lr": ctx.lr,
            "test_loss": metrics["loss"],
            "test_acc": metrics["acc"],
        }
        for cb in self.callbacks:
            if hasattr(cb, "on_eval"):
                row.update(cb.on_eval(ctx) or {})
        row["wall_s"] = wall_s
        self.metrics_sink(row)
        log.info("step %d: test loss %.4f, test acc %.4f", ctx.step, metrics["loss"], metrics["acc"])
        return row

    def _diverged(self, step: int, lr: float, value: float) -> None:
        raise TrainingDiverged(
            f"training diverged: the loss became {value} at step {step} (lr {lr:g}); lower optim.lr, "
            "add schedule.warmup_steps, or check the data"
        )

    # ------------------------------------------------------------------ helpers
    def _context(
        self,
        step: int,
        loss: torch.Tensor | None,
        indices: torch.Tensor,
        aug_seed: int,
        lr: float | None = None,
    ) -> StepContext:
        return StepContext(
            step=step,
            epoch=self.batches.epoch_of(step),
            lr=float(self.lr_at(max(step, 1))) if lr is None else lr,
            batch_indices=indices,
            aug_seed=aug_seed,
            loss=loss,
            model=self.model,
            optimizer=self.optimizer,
            total_steps=self.total_steps,
            device=self.device,
            evaluate=self.evaluate,
            train_batches=self.batches.recalibration_batches,
            trainer_state=self.state_dict,
            rank=self.rank,
            world_size=self.world_size,
        )

    def _call(self, hook: str, ctx: StepContext) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(ctx)

    @staticmethod
    def _name(cb: Any) -> str:
        return getattr(cb, "name", type(cb).__name__)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _progress_bar(self):  # noqa: ANN202 - tqdm or None
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)


__all__ = [
    "BatchSource",
    "CallbackBase",
    "RankFailed",
    "StepContext",
    "Trainer",
    "TrainResult",
    "TrainingDiverged",
]
