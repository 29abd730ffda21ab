"""``RecordedRun``: a run directory opened once, and the only way commands, the demo and the claims read one.

It holds, built once and typed: the run's config, its training and test data, its model (on one device),
the snapshot, checkpoint and batch-log steps, the weights of any step, the exact batch of any step (its
indices, augmentation seed and tensors), the one definition of the held-out control batches, the BatchNorm
recalibration batches, and :meth:`RecordedRun.evaluate`, the one place that recalibrates BatchNorm and
evaluates. The files themselves are read through :class:`trajlab.trajectory.TrajectoryStore`, which knows
nothing of datasets or models.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from trajlab.config import HostSettings, RunConfig
from trajlab.runs import build
from trajlab.runs.runner import RunDirError, load_run_config
from trajlab.train.evaluate import evaluate_model
from trajlab.train.metrics import read_metrics

BNChoice = Literal["recalibrated", "raw"]
Batch = tuple[Tensor, Tensor]
StateDict = dict[str, Tensor]


@dataclass(frozen=True)
class StepBatch:
    """The exact batch step ``step`` trained on.

    Attributes:
        step: the step (>= 1) that used the batch.
        indices: int64 [global batch] training-set indices, in the order the step saw them.
        aug_seed: the augmentation seed of the step (``None`` when the run does not augment).
        data: the batch as the loss consumes it: ``(x, y)``, float32 x [B, C, H, W], int64 y [B].
    """

    step: int
    indices: Tensor
    aug_seed: int | None
    data: Batch


@dataclass(frozen=True)
class Evaluation:
    """Test-set loss and accuracy of one set of weights, and which BatchNorm statistics were used
    (``"recalibrated"``, ``"running"`` or ``"none (no BatchNorm)"``)."""

    loss: float
    acc: float
    bn: str

    def to_dict(self) -> dict[str, float | str]:
        return {"loss": self.loss, "acc": self.acc, "bn": self.bn}


class RecordedRun:
    """A trajlab run directory, opened once.

    Args:
        run_dir: the run directory (``config.json``; ``trajectory/`` when the run was recorded).
        device: where the model, weights and batches live (``"auto"``: cuda if available, else cpu).
        host: where else to look for the data (:class:`~trajlab.config.HostSettings`).
        bn_batches: default number of recalibration batches of :meth:`evaluate` (default: the run's
            ``averaging.bn_batches``).

    Raises:
        RunDirError: not a run directory, or an unreadable ``config.json``.

    Example::

        run = RecordedRun("runs/fashion")
        run.evaluate(run.snapshot_steps[-1])            # {"loss", "acc", "bn": "recalibrated"}
        x, y = run.batch(500)                           # exactly what step 500 trained on
        controls = run.heldout_batches(4)               # the held-out control batches
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        device: torch.device | str = "cpu",
        host: HostSettings | None = None,
        bn_batches: int | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.config: RunConfig = load_run_config(self.run_dir)
        self.host = host or HostSettings()
        self.device = build.resolve_device(str(device))
        self.bn_batches = int(bn_batches if bn_batches is not None else self.config.averaging.bn_batches)

    # ---- files -------------------------------------------------------------------------------------------
    @functools.cached_property
    def store(self) -> Any:
        """The run's :class:`~trajlab.trajectory.TrajectoryStore` (snapshots and batch log)."""
        from trajlab.trajectory import TrajectoryStore

        if not (self.run_dir / "trajectory").is_dir():
            raise RunDirError(
                f"{self.run_dir} holds no trajectory (snapshots, batch log); record the run with "
                "record.enabled=true"
            )
        return TrajectoryStore(self.run_dir)

    @property
    def snapshot_steps(self) -> list[int]:
        """Steps that have a weight snapshot, ascending."""
        return self.store.steps()

    def steps(self) -> list[int]:
        """Same as :attr:`snapshot_steps` (the snapshot-source protocol of post-hoc averaging and probes)."""
        return self.snapshot_steps

    @property
    def batch_steps(self) -> list[int]:
        """Steps whose batch is in the batch log, ascending."""
        return self.store.batch_steps()

    @property
    def checkpoint_steps(self) -> list[int]:
        """Steps that have a resumable training checkpoint, ascending."""
        from trajlab.trajectory import list_checkpoints

        return [step for step, _ in list_checkpoints(self.run_dir)]

    @property
    def finished(self) -> bool:
        """Whether the run completed (its ``summary.json`` exists)."""
        return (self.run_dir / "summary.json").is_file()

    def provenance(self) -> dict[str, Any] | None:
        """The run's ``provenance.json`` (``None`` when there is none)."""
        path = self.run_dir / "provenance.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def metrics(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Rows of ``metrics.jsonl`` (``kind``: only ``"train"`` or ``"eval"`` rows), in file order."""
        rows = read_metrics(self.run_dir / "metrics.jsonl")
        return rows if kind is None else [r for r in rows if r.get("kind") == kind]

    # ---- data and model ----------------------------------------------------------------------------------
    @functools.cached_property
    def train_data(self) -> Any:
        """The training split as the run used it (subset included), loaded once."""
        return build.build_train_data(self.config, self.host.data_dirs)

    @functools.cached_property
    def test_data(self) -> Any:
        """The test split as the run used it, loaded once."""
        return build.build_test_data(self.config, self.host.data_dirs)

    def new_model(self) -> nn.Module:
        """A fresh copy of the run's architecture on :attr:`device` (weights are those of a seed-0 init)."""
        torch.manual_seed(0)
        model = build.build_model_for(self.config, self.train_data).to(self.device)
        if self.config.model.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    @functools.cached_property
    def model(self) -> nn.Module:
        """The run's model, built once; :meth:`load` puts a step's weights in it."""
        model = self.new_model()
        if (self.run_dir / "trajectory").is_dir() and self.snapshot_steps:
            self.store.check_compatible(model)
        return model

    @functools.cached_property
    def schedule(self) -> Any:
        """The run's learning-rate schedule: ``schedule(step)`` is the lr of step ``step``."""
        return build.build_schedule_for(self.config, build.total_steps_for(self.config, len(self.train_data)))

    @property
    def momentum(self) -> float:
        """The heavy-ball momentum of the run's optimizer (0 for AdamW)."""
        return float(self.config.optim.momentum) if self.config.optim.name == "sgd" else 0.0

    @property
    def update_weight_decay(self) -> float:
        """The weight decay inside the update direction: SGD's coupled decay; 0 for AdamW (decoupled)."""
        return float(self.config.optim.weight_decay) if self.config.optim.name == "sgd" else 0.0

    @functools.cached_property
    def _batches(self) -> build.DatasetBatches:
        return build.DatasetBatches(
            self.train_data,
            self.config.data,
            batch_size=self.config.train.batch_size,
            seed=self.config.train.seed,
            device=self.device,
            channels_last=self.config.model.channels_last,
        )

    # ---- weights -----------------------------------------------------------------------------------------
    def weights(self, step: int) -> StateDict:
        """The state dict stored at ``step`` (parameters and buffers), on :attr:`device`."""
        return self.store.load(step, device=self.device)

    def load(self, step: int, device: torch.device | str | None = None, dtype: Any = None) -> StateDict:
        """The snapshot-source protocol of post-hoc averaging and probes: the state dict at ``step``."""
        return self.store.load(step, device=self.device if device is None else device, dtype=dtype)

    def load_weights(self, weights: int | Mapping[str, Tensor]) -> nn.Module:
        """Put ``weights`` (a step, or a state dict) into :attr:`model` and return the model."""
        state = self.weights(weights) if isinstance(weights, int) else dict(weights)
        self.model.load_state_dict(state)
        return self.model

    # ---- batches -----------------------------------------------------------------------------------------
    def batch_indices(self, step: int) -> Tensor:
        """int64 [global batch] training-set indices of the batch step ``step`` trained on."""
        return self.store.batch_indices(step)

    def batch_record(self, step: int) -> StepBatch:
        """The exact batch step ``step`` trained on: its indices, augmentation seed and tensors."""
        indices = self.store.batch_indices(step)
        seed = self.store.aug_seed(step) if self.config.data.augment else None
        data = self._batches.make(indices, seed)
        return StepBatch(step, indices, seed, data)

    def batch(self, step: int, device: torch.device | str | None = None) -> Batch:
        """``(x, y)``, the exact global batch step ``step`` trained on (same augmentation draws)."""
        x, y = self.batch_record(step).data
        return (x, y) if device is None else (x.to(device), y.to(device))

    def heldout_batches(self, count: int, seed: int = 0) -> list[Batch]:
        """The held-out control batches (:func:`trajlab.runs.build.heldout_batches`: test-set images at the
        training batch size, through the training augmentation, never trained on)."""
        return build.heldout_batches(
            self.test_data,
            self.config.data,
            batch_size=self.config.train.batch_size,
            count=count,
            seed=seed,
            device=self.device,
            channels_last=self.config.model.channels_last,
        )

    def recalibration_batches(self, count: int | None = None) -> Iterator[Batch]:
        """The batches BatchNorm statistics are recomputed on: augmented training batches from a sampler
        independent of the training order (the same ones the runner's online averages use)."""
        return self._batches.recalibration_batches(self.bn_batches if count is None else count)

    def test_batches(self) -> Iterator[Batch]:
        """The whole test set in order, unaugmented, at ``train.eval_batch_size``."""
        from trajlab.data import iterate_eval

        return iterate_eval(
            self.test_data,
            self.config.train.eval_batch_size,
            device=self.device,
            channels_last=self.config.model.channels_last,
        )

    # ---- evaluation --------------------------------------------------------------------------------------
    def evaluate(
        self,
        weights: int | Mapping[str, Tensor],
        bn: BNChoice = "recalibrated",
        bn_batches: int | None = None,
    ) -> Evaluation:
        """Test loss and accuracy of ``weights`` (a step or a state dict): the one "recalibrate BN, evaluate".

        Args:
            weights: a snapshot step, or a state dict of the run's model (e.g. an average).
            bn: ``"recalibrated"``: recompute every BatchNorm's statistics on :meth:`recalibration_batches`
                first (standard practice for averages; the fair baseline for the last iterate too);
                ``"raw"``: the running statistics the weights carry.
            bn_batches: recalibration batches (default: :attr:`bn_batches`).
        """
        from trajlab.averaging import evaluate_with_bn

        if bn not in ("recalibrated", "raw"):
            raise ValueError(f"bn must be 'recalibrated' or 'raw', got {bn!r}")
        model = self.load_weights(weights)
        n = self.bn_batches if bn_batches is None else int(bn_batches)
        recal = self.recalibration_batches(n) if bn == "recalibrated" else None
        used, metrics = evaluate_with_bn(
            model, lambda m: evaluate_model(m, self.test_batches, device_type=self.device.type), recal, n
        )
        return Evaluation(metrics["loss"], metrics["acc"], used)
