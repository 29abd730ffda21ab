"""``trajlab.record``: record the trajectory of any training loop, resumable, in a few lines.

::

    with trajlab.record("runs/mine", model, optimizer, loss_fn=loss_fn, averages=[EMA(0.99)],
                        model_factory=make_model, data_factory=make_data) as rec:
        for batch in rec.batches(loader, epochs=3):     # the loader's batches, their indices logged
            loss = loss_fn(model, batch)
            optimizer.zero_grad(); loss.backward(); optimizer.step()
            rec.log(train_loss=loss)

What happens, and when:

* ``optimizer.step()`` is seen through a post-step hook on the optimizer: step t is the t-th update.
  Everything about step t (its batch indices into the batch log, the online averages, the snapshot on the
  schedule, the checkpoint, the metrics row) is done when the loop asks for the next batch, or when the
  ``with`` block ends: after the user's own code for step t (an lr scheduler's ``step()``, logging) ran,
  so a checkpoint holds the state the next step starts from. Batches drawn between two updates (gradient
  accumulation) all belong to the next step.
* A normal exit marks the run finished (``summary.json``). An exception or a kill leaves it unfinished
  (``trajlab runs verify`` says so); running the same script again resumes it from its last checkpoint,
  bit-identically: model, optimizer, schedulers, averages, RNG and the loader's position are restored,
  and ``rec.batches(loader, epochs=...)`` / ``rec.epochs(...)`` continue mid-epoch without loading the
  batches already trained on.
* Under ``torchrun`` (an initialised process group) every rank's batch indices are gathered into the
  global batch and rank 0 alone writes; a write error on rank 0 stops every rank with the same error.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trajlab.config import HostSettings
from trajlab.runs.loaders import LoggedBatchSampler, logged_loader, mix_seed
from trajlab.runs.recording_state import RecordingCore, RecordingError

log = logging.getLogger(__name__)


class Recording(RecordingCore):
    """The context manager :func:`record` returns; see the module docstring for the life cycle."""

    # ---- the loop ----------------------------------------------------------------------------------------
    def batches(
        self, loader: Any, epochs: int | None = None, *, max_steps: int | None = None
    ) -> Iterator[Any]:
        """The batches of ``loader``, their indices logged; resumes where the run stopped.

        Args:
            loader: a ``torch.utils.data.DataLoader`` over a map-style dataset (any sampler, batch size,
                ``drop_last``, workers, collate function).
            epochs: passes over the loader counted from the start of the run (a resumed run does the rest);
                ``None``: one pass (use it inside ``for epoch in rec.epochs(n)``).
            max_steps: stop once the run has made this many optimizer steps.
        """
        self._check_open()
        self._remember_loader(loader)
        last = self.epoch + 1 if epochs is None else epochs
        while self.epoch < last and not self._reached(max_steps):
            yield from self._one_pass(loader, max_steps)

    def epochs(self, count: int) -> Iterator[int]:
        """Epoch numbers ``e .. count - 1``, from the one a resumed run stopped in (0 for a new run)."""
        self._check_open()
        while self.epoch < count:
            start = self.epoch
            yield start
            if self.epoch == start:  # the body did not run a pass of rec.batches(loader)
                self.epoch += 1

    def _reached(self, max_steps: int | None) -> bool:
        return max_steps is not None and self.step >= max_steps

    def _logged_iterator(self, loader: Any) -> Iterator[Any]:
        """An iterator over one pass of ``loader`` through a logging batch sampler; a resumed run's first
        pass skips the batches already trained on (then restores the RNG)."""
        skip, on_position = self._resume_position()
        sampler = self.logged_batch_sampler(loader.batch_sampler, skip)
        sampler.on_position = on_position
        if skip == 0:
            self.epoch_rng = _rng_state(loader)
        return iter(logged_loader(loader, sampler))

    def _one_pass(self, loader: Any, max_steps: int | None) -> Iterator[Any]:
        iterator = self._logged_iterator(loader)
        try:
            while True:
                self.flush()
                if self._reached(max_steps):
                    return
                try:
                    batch = next(iterator)
                except StopIteration:
                    break
                self._take(self.drawn.popleft())
                yield batch
            self.flush()
            self.epoch += 1
            self.batches_in_epoch = 0
        finally:
            del iterator  # shut worker processes down now, not at garbage collection

    # ---- driven by a framework (trajlab.integrations: Lightning, Hugging Face) ----------------------------
    # The framework iterates the loader and steps the optimizer; its events say when a batch is trained on
    # (take_batch, before that step's optimizer.step()), when a step's work is due (flush) and when an epoch
    # ends (finish_epoch). Prefetching frameworks draw batches ahead: the FIFO keeps them in order.
    def use_loader(self, loader: Any) -> None:
        """Make ``loader`` (a DataLoader) the run's training loader: checked, and written into the recipe."""
        self._check_open()
        self._remember_loader(loader)

    def logged_batch_sampler(self, inner: Any, skip: int = 0) -> LoggedBatchSampler:
        """``inner`` (a batch sampler) logging every index list it yields into this recording's FIFO."""
        seeds = (lambda n: mix_seed(self.seed, n) >> 2) if self.seeded else None
        return LoggedBatchSampler(inner, self.drawn, skip=skip, seeds=seeds, first_batch=self.batches_drawn)

    def logged_pass(self, loader: Any) -> Iterator[Any]:
        """One pass over ``loader`` (the one given to :meth:`use_loader`), its index lists logged; the first
        pass of a resumed run skips the batches already trained on and restores the RNG as :meth:`batches`
        does. Unlike :meth:`batches` it neither takes batches nor flushes: the framework's events do."""
        self._check_open()
        iterator = self._logged_iterator(loader)
        try:
            yield from iterator
        finally:
            del iterator

    def take_batch(self) -> None:
        """The framework trains on the next batch drawn (call before that batch's ``optimizer.step()``).

        A pass whose batches were all taken ends the epoch here, so a checkpoint written before the
        framework's own end-of-epoch event resumes at the next epoch.
        """
        if not self.drawn:
            raise RecordingError(
                "a batch was trained on that the logged loader did not draw; train on the loader the "
                "recording wraps (one training DataLoader per run)"
            )
        self._take(self.drawn.popleft())
        length = len(self._loader.batch_sampler) if self._loader is not None else 0
        if length and self.batches_in_epoch >= length:
            self.epoch += 1
            self.batches_in_epoch = 0

    def drop_drawn(self, count: int) -> None:
        """Forget the ``count`` oldest drawn batches (a framework skipped them on resume without training)."""
        for _ in range(min(count, len(self.drawn))):
            self.drawn.popleft()

    def finish_epoch(self) -> None:
        """The framework ended an epoch (possibly early, e.g. ``limit_train_batches``): the next pass is a
        new epoch, and index lists drawn ahead but never trained on are dropped."""
        self.drawn.clear()
        if self.batches_in_epoch:
            self.epoch += 1
            self.batches_in_epoch = 0

    def _resume_position(self) -> tuple[int, Callable[[], None] | None]:
        """Batches to skip in this pass, and what to do once they are skipped (restore the RNG)."""
        point = self.resume_point
        if point is None or point["epoch"] != self.epoch:
            return 0, None
        self.resume_point = None
        _set_rng_state(point["epoch_rng"], self._loader)
        self.epoch_rng = point["epoch_rng"]
        at_checkpoint = point["rng_at_checkpoint"]

        def restore() -> None:  # after the sampler drew this epoch's order: the RNG of the checkpoint
            _set_rng_state(at_checkpoint, None)

        return int(point["batches_in_epoch"]), restore


def record(
    run_dir: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | str | None = None,
    snapshots: int | dict[str, Any] | Any = 10,
    averages: Sequence[Any] = (),
    average_every_steps: int | Sequence[int] = 1,
    checkpoint_every_steps: int = 100,
    keep_checkpoints: int = 2,
    model_factory: Callable[[], nn.Module] | str | None = None,
    data_factory: Callable[[], Any] | str | None = None,
    collate_fn: Callable[[list[Any]], Any] | str | None = None,
    schedulers: Sequence[Any] = (),
    seed: int = 0,
    log_every_steps: int = 10,
    tensorboard: bool | None = None,
    resume: bool = True,
    snapshot_dtype: str = "float32",
    framework: str = "plain",
    host: HostSettings | None = None,
) -> Recording:
    """Record the trajectory of the training loop inside ``with``: snapshots, batches, averages, metrics.

    Args:
        run_dir: the run directory (created; a directory holding this run's unfinished recording is
            resumed, one holding another run or a finished one is refused).
        model: the model being trained (DDP / compile wrappers are unwrapped for snapshots and averages).
        optimizer: its optimizer; each ``optimizer.step()`` is one step.
        loss_fn: the loss hook ``loss_fn(model, batch) -> scalar`` (or a criterion such as
            ``F.cross_entropy`` for ``(x, y)`` batches); recorded so probes and evaluations use it.
        snapshots: snapshot schedule: every N steps (an int), or a
            :class:`~trajlab.trajectory.SnapshotSchedule` / its dict.
        averages: averaging rules kept online (``EMA(0.99)``, ``TwoPoint(500)``, ... in one pass).
        average_every_steps: their update interval, one for all or one per rule.
        checkpoint_every_steps: resumable checkpoint period (0: only at the end).
        keep_checkpoints: checkpoints kept on disk.
        model_factory, data_factory: callables (or ``module:function`` / ``script.py:function`` references)
            that rebuild the model and the datasets, recorded so the CLI can open the run.
        collate_fn: how a batch is made from dataset items (default: the loader's, recorded if importable).
        schedulers: lr schedulers (anything with ``state_dict``/``load_state_dict``) checkpointed too.
        seed: the run's seed for :class:`~trajlab.runs.loaders.SeededAugmentation` batch seeds.
        log_every_steps: a train metrics row every N steps (means of what :meth:`Recording.log` got).
        tensorboard: also write TensorBoard scalars (default: when ``tensorboard`` is installed).
        resume: continue an unfinished recording in ``run_dir`` from its last checkpoint.
        snapshot_dtype: ``"float32"`` or ``"bfloat16"``.
        framework: who drives the loop (``plain``, ``lightning``, ``hf``), for the recipe.
        host: the machine's settings (the CPU averaging kernel).

    Returns:
        A :class:`Recording`: use it as a context manager.
    """
    return Recording(
        Path(run_dir),
        model,
        optimizer,
        loss_fn=loss_fn,
        snapshots=snapshots,
        averages=averages,
        average_every_steps=average_every_steps,
        checkpoint_every_steps=checkpoint_every_steps,
        keep_checkpoints=keep_checkpoints,
        model_factory=model_factory,
        data_factory=data_factory,
        collate_fn=collate_fn,
        schedulers=schedulers,
        seed=seed,
        log_every_steps=log_every_steps,
        tensorboard=tensorboard,
        resume=resume,
        snapshot_dtype=snapshot_dtype,
        framework=framework,
        host=host or HostSettings(),
    )


def _rng_state(loader: Any) -> dict[str, Any]:
    """The global torch RNG (and the loader's generator) as a loader's pass starts: it decides the order."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    generator = getattr(loader, "generator", None)
    if generator is not None:
        state["loader_generator"] = generator.get_state()
    return state


def _set_rng_state(state: dict[str, Any], loader: Any) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator = getattr(loader, "generator", None)
    if loader is not None and generator is not None and "loader_generator" in state:
        generator.set_state(state["loader_generator"])
