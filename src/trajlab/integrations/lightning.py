"""A Lightning callback that records the trajectory and keeps online averages (needs ``trajlab[lightning]``).

::

    from trajlab.averaging import EMA, TwoPoint
    from trajlab.integrations.lightning import TrajectoryCallback

    callback = TrajectoryCallback("runs/lit", loss_fn=loss_fn, averages=[EMA(0.99), TwoPoint(200)],
                                  model_factory=make_model, data_factory=make_data)
    trainer = lightning.Trainer(max_epochs=5, callbacks=[callback])
    trainer.fit(module, train_loader, val_loader)    # resume: trainer.fit(..., ckpt_path="last.ckpt")

Compared with Lightning's own ``WeightAveraging`` (one ``AveragedModel``, a deep copy of the module, one
average, BatchNorm buffers averaged): any number of averages (EMAs, two-point, SWA, ...) updated in one
pass over the weights, no copy of the module, each average evaluated with BatchNorm recalibrated, and the
run recorded for ``trajlab average/probe/report``. The live weights stay in the module: a checkpoint holds
the live model and, in the callback's state, the averages (``trajlab average RUN`` or
:meth:`TrajectoryCallback.averaged_state_dict` give averaged weights).

Validation: after the module's own validation epoch, each average is swapped into the module, its
BatchNorm statistics recalibrated on ``bn_batches`` training batches, and the module's
``validation_step`` run over the same validation loaders (what it passes to ``self.log`` is collected and
averaged over batches, weighted by batch size); the results are logged as ``"{average}/{metric}"``
(e.g. ``"ema_0.99/val_loss"``) into the trainer's loggers, and the live weights are swapped back.
Under DDP every rank trains and evaluates its shard, rank 0 alone writes the run.

Resume: the callback's state (in Lightning's checkpoint) holds the averages, the loader's position and the
RNG, so ``trainer.fit(..., ckpt_path=...)`` continues bit-identically, also from a checkpoint in the
middle of an epoch (the logged loader skips the batches already trained on; Lightning's warning that the
DataLoader "is not resumable" does not apply to it). A fit that raises leaves the run unfinished.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from trajlab.integrations._core import FrameworkRecording, LoggedLoader, missing_extra
from trajlab.objective import batch_size

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - exercised without the extra
    try:
        import pytorch_lightning as pl  # the older package name
    except ImportError:
        raise missing_extra("lightning", "lightning") from None

__all__ = ["TrajectoryCallback"]


class TrajectoryCallback(pl.Callback):
    """Record a Lightning run (snapshots, the exact batch of each step, metrics) and keep online averages.

    Args:
        run_dir: the run directory (``trajlab runs verify/average/probe/report`` read it).
        loss_fn: the loss hook ``loss_fn(model, batch) -> loss`` (or ``"module:function"``), recorded so the
            CLI's probes and BatchNorm recalibration use it.
        averages: averaging rules kept online, all in one pass (``EMA(0.99)``, ``TwoPoint(500)``, ...).
        average_every_steps: their update interval in optimizer steps (one, or one per rule).
        snapshots: snapshot every N steps, or a :class:`~trajlab.trajectory.SnapshotSchedule` / dict.
        model_factory, data_factory: callables (or references) rebuilding the model (``nn.Module``, e.g.
            the LightningModule) and the datasets ``(train, eval)``, recorded for the CLI.
        collate_fn: how a batch is made from items, when the loader's is not importable by name.
        bn_batches: training batches for each average's BatchNorm recalibration at validation.
        log_every_steps: a train metrics row (``metrics.jsonl``) every N steps.
        tensorboard: also write TensorBoard scalars into the run (default: when installed).
        seed: the run's seed for :class:`~trajlab.runs.loaders.SeededAugmentation`.
        snapshot_dtype: ``"float32"`` or ``"bfloat16"``.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        loss_fn: Any = None,
        averages: Sequence[Any] = (),
        average_every_steps: int | Sequence[int] = 1,
        snapshots: Any = 10,
        model_factory: Any = None,
        data_factory: Any = None,
        collate_fn: Any = None,
        bn_batches: int = 50,
        log_every_steps: int = 10,
        tensorboard: bool | None = None,
        seed: int = 0,
        snapshot_dtype: str = "float32",
    ) -> None:
        self.recording = FrameworkRecording(
            run_dir,
            framework="lightning",
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
            seed=seed,
            snapshot_dtype=snapshot_dtype,
        )
        self._loaded: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return f"TrajectoryCallback[{self.recording.run_dir}]"

    @property
    def run_dir(self) -> Path:
        return self.recording.run_dir

    # ---- training ---------------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if len(trainer.optimizers) != 1:
            raise ValueError(
                f"TrajectoryCallback records runs with one optimizer; this module configures "
                f"{len(trainer.optimizers)}"
            )
        combined = trainer.fit_loop._combined_loader
        loaders = combined.flattened if combined is not None else []
        if len(loaders) != 1 or not isinstance(loaders[0], torch.utils.data.DataLoader):
            raise ValueError(
                "TrajectoryCallback records runs with one training DataLoader (map-style dataset); got "
                f"{[type(dl).__name__ for dl in loaders]}"
            )
        state, self._loaded = self._loaded, None
        rec = self.recording.open(pl_module, trainer.optimizers[0], loaders[0], state)
        # Lightning iterates the logged loader from here on; its fetcher already made an iterator over the
        # user's loader in setup_data (nothing drawn yet), so make it again over ours.
        combined.flattened = [LoggedLoader(rec, loaders[0])]
        iter(trainer.fit_loop._data_fetcher)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.recording.is_open:
            self.recording.recording.take_batch()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        rec = self.recording.recording
        if rec is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            rec.log(train_loss=loss)
        rec.flush()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.recording.is_open:
            self.recording.recording.finish_epoch()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.recording.close()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self.recording.close(exception)

    # ---- validation -------------------------------------------------------------------------------------
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self.recording.is_open:
            return
        results = self.recording.evaluate_averages(
            pl_module, lambda model, name: _validate(trainer, pl_module), pl_module.device
        )
        sync = trainer.world_size > 1
        for name, metrics in results.items():
            for key, value in metrics.items():
                pl_module.log(f"{name}/{key}", value, on_step=False, on_epoch=True, sync_dist=sync)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rec = self.recording.recording
        if trainer.sanity_checking or rec is None:
            return
        scalars = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if isinstance(v, torch.Tensor) and v.numel() == 1
        }
        rec.log_eval(**scalars)

    # ---- checkpoints ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"recording": self.recording.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = state_dict.get("recording")

    # ---- reading ----------------------------------------------------------------------------------------
    def averaged_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """The module's state dict with average ``name`` in place of the live weights (during training)."""
        rec = self.recording.recording
        if rec is None or rec.averaged is None:
            raise RuntimeError("no averages are held: the recording is not open or has no averages")
        return rec.averaged.averaged_state_dict(name)


def _validate(trainer: pl.Trainer, module: pl.LightningModule) -> dict[str, float]:
    """The module's ``validation_step`` over the trainer's validation loaders (as limited there), with
    what it logs collected instead of logged: ``{name: mean over batches, weighted by batch size}``."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    current = {"size": 1.0}

    def collect(name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(value, torch.Tensor):
            value = value.detach().float().mean().item()
        if not isinstance(value, int | float):
            return
        w = float(kwargs.get("batch_size") or current["size"])
        sums[name] = sums.get(name, 0.0) + float(value) * w
        weights[name] = weights.get(name, 0.0) + w

    def collect_dict(dictionary: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        for name, value in dictionary.items():
            collect(name, value, **kwargs)

    loaders = trainer.val_dataloaders
    loaders = [loaders] if not isinstance(loaders, list | tuple) else list(loaders)
    limits = list(trainer.num_val_batches) or [float("inf")] * len(loaders)
    module.log, module.log_dict = collect, collect_dict  # instance attributes shadow the methods
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            for index, loader in enumerate(loaders):
                for i, batch in enumerate(loader):
                    if i >= limits[index]:
                        break
                    batch = trainer.strategy.batch_to_device(batch, module.device)
                    try:
                        current["size"] = float(batch_size(batch))
                    except (TypeError, ValueError):
                        current["size"] = 1.0
                    extra = {"dataloader_idx": index} if len(loaders) > 1 else {}
                    module.validation_step(batch, i, **extra)
    finally:
        del module.log, module.log_dict
        module.train(was_training)
    return {name: sums[name] / weights[name] for name in sums if weights[name] > 0}
