"""A Hugging Face ``TrainerCallback`` that records the trajectory and keeps online averages (needs
``trajlab[hf]``).

::

    from trajlab.averaging import EMA, TwoPoint
    from trajlab.integrations.hf import TrajectoryCallback

    callback = TrajectoryCallback("runs/hf", averages=[EMA(0.99), TwoPoint(200)],
                                  model_factory=make_model, data_factory=make_data)
    trainer = Trainer(model=make_model(), args=args, train_dataset=train, eval_dataset=test)
    callback.attach(trainer)          # adds the callback; lets it run trainer.evaluate() for each average
    trainer.train()                   # resume: trainer.train(resume_from_checkpoint=True)

What it does, per Trainer event: the training loader's batch sampler is wrapped so every index list it
yields is logged (the Trainer's own resume skipping and RNG restore are kept); each optimizer step's
batches (all micro-batches under gradient accumulation) go into the batch log; after the step, the online
averages are updated and snapshots taken on the schedule. After each of the Trainer's evaluations, every
average is swapped into the model, its BatchNorm statistics (if any) recalibrated on training batches, and
``trainer.evaluate(metric_key_prefix="eval_{average}")`` run: the Trainer logs ``eval_ema_0.99_loss``
and the like to its own loggers (``report_to``), then the live weights come back. At every save, the
recording's state (averages, loader position, the recorder's files) is written into the
``checkpoint-N`` folder as ``trajlab_recording.pt`` and read back by
``trainer.train(resume_from_checkpoint=...)``, so the averages resume bit-identical.

The default loss hook is :func:`hf_loss` (``model(**batch).loss``, the Hugging Face shape: dict batches
with ``labels``). Under DDP only rank 0 writes.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trajlab.files import write_bytes_atomic
from trajlab.integrations._core import ForwardingBatchSampler, FrameworkRecording, missing_extra
from trajlab.runs.recording_state import RecordingError

try:
    import transformers
except ImportError:  # pragma: no cover - exercised without the extra
    raise missing_extra("transformers", "hf") from None

__all__ = ["STATE_FILE", "TrajectoryCallback", "hf_loss"]

log = logging.getLogger(__name__)

STATE_FILE = "trajlab_recording.pt"
# Timing entries of trainer.evaluate()'s metrics: not the average's, left out of the averages' rows.
_TIMING = ("runtime", "samples_per_second", "steps_per_second")


def hf_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """The Hugging Face loss hook: ``model(**batch).loss`` for a dict batch holding ``labels``."""
    if not isinstance(batch, dict):
        raise TypeError(
            f"hf_loss expects a dict batch (input_ids, labels, ...), got {type(batch).__name__}; pass "
            "loss_fn=your_hook for other batch shapes"
        )
    out = model(**batch)
    loss = out["loss"] if isinstance(out, dict) else getattr(out, "loss", None)
    if loss is None:
        raise ValueError("the model returned no loss: the batch needs `labels` (or pass loss_fn=your_hook)")
    return loss


class TrajectoryCallback(transformers.TrainerCallback):
    """Record a Hugging Face Trainer run (snapshots, exact batches, metrics) and keep online averages.

    Args:
        run_dir: the run directory (``trajlab runs verify/average/probe/report`` read it); keep it apart
            from the Trainer's ``output_dir``.
        loss_fn: the loss hook ``loss_fn(model, batch)`` (default :func:`hf_loss`), recorded for the CLI.
        averages: averaging rules kept online, all in one pass (``EMA(0.99)``, ``TwoPoint(500)``, ...).
        average_every_steps: their update interval in optimizer steps (one, or one per rule).
        snapshots: snapshot every N steps, or a :class:`~trajlab.trajectory.SnapshotSchedule` / dict.
        model_factory, data_factory: callables (or references) rebuilding the model and the datasets
            ``(train, eval)``, recorded for the CLI.
        collate_fn: how a batch is made from items (e.g. ``transformers.default_data_collator``); default:
            the training loader's when it is importable by name.
        bn_batches: training batches for each average's BatchNorm recalibration at evaluation.
        log_every_steps: a train metrics row (``metrics.jsonl``) every N steps.
        tensorboard: also write TensorBoard scalars into the run (default: when installed).
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        loss_fn: Any = hf_loss,
        averages: Sequence[Any] = (),
        average_every_steps: int | Sequence[int] = 1,
        snapshots: Any = 10,
        model_factory: Any = None,
        data_factory: Any = None,
        collate_fn: Any = None,
        bn_batches: int = 50,
        log_every_steps: int = 10,
        tensorboard: bool | None = None,
        snapshot_dtype: str = "float32",
    ) -> None:
        self.recording = FrameworkRecording(
            run_dir,
            framework="hf",
            bn_batches=bn_batches,
            loss_fn=loss_fn,
            averages=list(averages),
            average_every_steps=average_every_steps,
            snapshots=snapshots,
            model_factory=model_factory,
            data_factory=data_factory,
            collate_fn=collate_fn,
            log_every_steps=log_every_steps,
            tensorboard=tensorboard,
            snapshot_dtype=snapshot_dtype,
        )
        self.trainer: Any = None
        self._to_drop = 0
        self._evaluating = False
        self._warned = False

    @property
    def run_dir(self) -> Path:
        return self.recording.run_dir

    def attach(self, trainer: Any) -> TrajectoryCallback:
        """Add this callback to ``trainer`` and let it evaluate the averages with ``trainer.evaluate``."""
        self.trainer = trainer
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        return self

    def close(self, error: BaseException | None = None) -> None:
        """End the recording now: unfinished with ``error`` (the Trainer has no exception event, so call
        this in ``except`` around ``trainer.train()`` to release the run's files; a resume continues it)."""
        self.recording.close(error)

    # ---- training ---------------------------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model, optimizer, loader = (
            kwargs.get("model"),
            kwargs.get("optimizer"),
            kwargs.get("train_dataloader"),
        )
        if not isinstance(loader, torch.utils.data.DataLoader) or loader.batch_sampler is None:
            raise ValueError(
                "TrajectoryCallback records a Trainer whose training loader is a DataLoader over a map-style "
                f"dataset with batches; got {type(loader).__name__}"
            )
        optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it
        saved = self._read_state(args, state) if state.global_step > 0 else None
        rec = self.recording.open(model, optimizer, loader, saved)
        if rec.seeded:
            self.recording.close(RecordingError("SeededAugmentation"))
            raise RecordingError(
                "SeededAugmentation is not supported under the Hugging Face Trainer; record with "
                "trajlab.record or the Lightning callback"
            )
        # The Trainer iterates this very loader every epoch (and wraps it to skip batches on resume): log
        # its batch sampler in place. DataLoader forbids setting it after construction, hence object's.
        # accelerate's DataLoaderShard iterates the DataLoader it wraps (its base_dataloader).
        target = getattr(loader, "base_dataloader", loader)
        object.__setattr__(target, "batch_sampler", ForwardingBatchSampler(target.batch_sampler, rec.drawn))
        self._to_drop = 0
        if saved is not None:
            if args.ignore_data_skip:  # the Trainer starts the epoch over
                rec.batches_in_epoch = 0
            else:  # the Trainer draws and skips the batches already trained on in this epoch
                self._to_drop = rec.batches_in_epoch

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        rec = self.recording.recording
        if rec is None:
            return
        if self._to_drop:
            rec.drop_drawn(self._to_drop)
            self._to_drop = 0
        rec.take_batch()  # the step's first micro-batch

    def on_substep_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.recording.is_open:
            self.recording.recording.take_batch()  # the next micro-batch of the same step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.recording.is_open:
            self.recording.recording.flush()

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.recording.is_open:
            self.recording.recording.finish_epoch()

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        rec = self.recording.recording
        if rec is not None and logs and isinstance(logs.get("loss"), int | float):
            rec.log(train_loss=float(logs["loss"]))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.recording.close()

    # ---- evaluation -------------------------------------------------------------------------------------
    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        rec = self.recording.recording
        if rec is None or self._evaluating:
            return  # not training, or the nested trainer.evaluate() of an average
        live = {k: float(v) for k, v in (metrics or {}).items() if _is_metric(k, v)}
        results: dict[str, dict[str, float]] = {}
        if self.trainer is None:
            if rec.averaged is not None and not self._warned:
                log.warning("TrajectoryCallback: call callback.attach(trainer) to evaluate the averages")
                self._warned = True
        else:
            self._evaluating = True
            try:
                results = self.recording.evaluate_averages(
                    kwargs.get("model") or self.trainer.model, self._evaluate
                )
            finally:
                self._evaluating = False
        rec.log_eval(**live, **{f"{name}/{k}": v for name, m in results.items() for k, v in m.items()})

    def _evaluate(self, model: nn.Module, name: str) -> dict[str, float]:
        prefix = f"eval_{name}"
        out = self.trainer.evaluate(metric_key_prefix=prefix)
        cut = len(prefix) + 1
        return {k[cut:]: float(v) for k, v in out.items() if k.startswith(prefix + "_") and _is_metric(k, v)}

    # ---- checkpoints ------------------------------------------------------------------------------------
    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        saved = self.recording.state_dict()
        if saved is None or not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        buffer = io.BytesIO()
        torch.save(saved, buffer)
        write_bytes_atomic(folder / STATE_FILE, buffer.getbuffer())

    def _read_state(self, args: Any, state: Any) -> dict[str, Any]:
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}" / STATE_FILE
        if not path.is_file():
            raise RecordingError(
                f"{path} is missing: the checkpoint was not written with TrajectoryCallback (or the save was "
                "interrupted); resume from a checkpoint that has it, or record into a new run directory"
            )
        return torch.load(path, weights_only=True, map_location="cpu")


def _is_metric(key: str, value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
        and not key.endswith(_TIMING)
        and key != "epoch"
    )
