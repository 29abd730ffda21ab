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
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from trajlab.config import HostSettings, RunConfig
from trajlab.files import ChecksumError, read_verified
from trajlab.objective import batch_to
from trajlab.runs import build
from trajlab.runs.recipe import RECIPE_FILE, Recipe, read_recipe
from trajlab.runs.runner import RunDirError, load_run_config
from trajlab.runs.sources import EngineSource, LoopSource
from trajlab.train.metrics import read_metrics
from trajlab.trajectory.errors import DamageError

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
        data: the batch as the loss consumes it: ``(x, y)`` (float32 x [B, C, H, W], int64 y [B]) for engine
            runs; the loop's collated batch (tuple, dict, ...) for recorded loops.
    """

    step: int
    indices: Tensor
    aug_seed: int | None
    data: Any


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
    """A recorded run directory, opened once: a trajlab-engine run (``config.json``) or a run recorded from
    any loop by :func:`trajlab.record` (``recipe.json``).

    Args:
        run_dir: the run directory.
        device: where the model, weights and batches live (``"auto"``: cuda if available, else cpu).
        host: where else to look for the data (:class:`~trajlab.config.HostSettings`).
        bn_batches: default number of recalibration batches of :meth:`evaluate` (default: the engine run's
            ``averaging.bn_batches``, 50 for a recorded loop).
        model, data, loss_fn, collate_fn: for a recorded loop, what to use instead of (or when it has none)
            the recipe's factories: objects (a model, a dataset or ``(train, eval)``, a hook) or
            ``module:function`` / ``script.py:function`` references.
        verify: check every file read against its sha256 / CRC (``False``: ``--no-verify``).

    Raises:
        RunDirError: not a run directory, or an unreadable ``config.json`` / ``recipe.json``.

    Example::

        run = RecordedRun("runs/fashion")
        run.evaluate(run.snapshot_steps[-1])            # Evaluation(loss, acc, bn="recalibrated")
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
        model: Any = None,
        data: Any = None,
        loss_fn: Any = None,
        collate_fn: Any = None,
        verify: bool = True,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.verify = verify
        self.host = host or HostSettings()
        self.device = build.resolve_device(str(device))
        self.config: RunConfig | None = None
        self.recipe: Recipe | None = None
        if (self.run_dir / RECIPE_FILE).is_file() and not (self.run_dir / "config.json").is_file():
            try:
                self.recipe = read_recipe(self.run_dir, verify=verify)
                self.source: Any = LoopSource(
                    self.recipe,
                    self.run_dir,
                    self.device,
                    model=model,
                    data=data,
                    loss_fn=loss_fn,
                    collate_fn=collate_fn,
                )
            except DamageError:
                raise
            except (ValueError, TypeError) as e:
                raise RunDirError(str(e)) from None
            default_bn = 50
        else:
            self.config = load_run_config(self.run_dir, verify=verify)
            self.source = EngineSource(self.config, self.host, self.device)
            default_bn = self.config.averaging.bn_batches
        self.bn_batches = int(bn_batches if bn_batches is not None else default_bn)

    @property
    def kind(self) -> str:
        """``"engine"`` (trained by trajlab) or ``"loop"`` (recorded from a user's loop)."""
        return self.source.kind

    def description(self) -> dict[str, Any]:
        """The run's config (engine runs) or recipe (recorded loops), as a dict for result files."""
        return self.source.description()

    @property
    def seed(self) -> int:
        return self.source.seed

    @property
    def num_threads(self) -> int:
        """The run's own thread budget (engine runs' ``train.num_threads``; 0 = none asked)."""
        return self.source.num_threads

    @property
    def loss_fn(self) -> Any:
        """The loss hook ``loss_fn(model, batch)`` probes and evaluations use."""
        return self.source.require_loss() if hasattr(self.source, "require_loss") else self.source.loss_fn

    # ---- files -------------------------------------------------------------------------------------------
    @functools.cached_property
    def store(self) -> Any:
        """The run's :class:`~trajlab.trajectory.TrajectoryStore` (snapshots and batch log)."""
        from trajlab.trajectory import TrajectoryStore

        if not (self.run_dir / "trajectory").is_dir():
            raise RunDirError(
                f"{self.run_dir} holds no trajectory (snapshots, batch log); record the run with "
                "record.enabled=true (engine) or trajlab.record (your own loop)"
            )
        return TrajectoryStore(self.run_dir, verify=self.verify)

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
        if not (self.run_dir / "provenance.json").is_file():
            return None
        try:
            return json.loads(read_verified(self.run_dir, "provenance.json", verify=self.verify))
        except ChecksumError as e:
            raise DamageError(str(e)) from None

    def metrics(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Rows of ``metrics.jsonl`` (``kind``: only ``"train"`` or ``"eval"`` rows), in file order."""
        rows = read_metrics(self.run_dir / "metrics.jsonl", verify=self.verify)
        return rows if kind is None else [r for r in rows if r.get("kind") == kind]

    # ---- data and model ----------------------------------------------------------------------------------
    @property
    def train_data(self) -> Any:
        """The training dataset as the run used it, loaded once."""
        return self.source.train_data()

    @property
    def test_data(self) -> Any:
        """The test (eval) dataset of the run, loaded once."""
        return self.source.test_data()

    def new_model(self) -> nn.Module:
        """A fresh copy of the run's architecture on :attr:`device` (weights: a seed-0 init)."""
        return self.source.new_model()

    @functools.cached_property
    def model(self) -> nn.Module:
        """The run's model, built once; :meth:`load_weights` puts a step's weights in it."""
        model = self.new_model()
        if (self.run_dir / "trajectory").is_dir() and self.snapshot_steps:
            self.store.check_compatible(model)
        return model

    def lr_at(self, step: int) -> float:
        """The learning rate step ``step`` was taken with (engine runs: the schedule; recorded loops: the
        snapshot manifest and metrics rows, the last one at or before ``step``)."""
        if self.config is not None:
            return float(self._schedule(step))
        known = {e.step: e.lr for e in self.store.manifest if e.step > 0}
        known.update({int(r["step"]): float(r["lr"]) for r in self.metrics("train") if "lr" in r})
        before = [s for s in known if s <= step]
        if not before:
            return float((self.recipe.optimizer if self.recipe else {}).get("lr", math.nan))
        return known[max(before)]

    @functools.cached_property
    def _schedule(self) -> Any:
        return self.source.schedule()

    def schedule(self, step: int) -> float:
        """Same as :meth:`lr_at`."""
        return self.lr_at(step)

    @property
    def momentum(self) -> float:
        """The heavy-ball momentum of the run's optimizer (0 for AdamW and other non-SGD optimizers)."""
        return self.source.momentum

    @property
    def update_weight_decay(self) -> float:
        """The weight decay inside the update direction: SGD's coupled decay; 0 for AdamW (decoupled)."""
        return self.source.update_weight_decay

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
    def check_batch_log(self) -> None:
        """Raise :class:`DamageError` when the batch log does not hold every step the run trained (records
        lost or damaged); nothing for a run that logged no batches at all."""
        from trajlab.trajectory.quarantine import scan_batch_log
        from trajlab.trajectory.verify_run import trained_steps

        batches = self.run_dir / "trajectory" / "batches"
        if not self.verify or not batches.is_dir():
            return
        trained, (end, where) = trained_steps(self.run_dir), scan_batch_log(self.run_dir)
        if end < trained:
            raise DamageError(
                f"{where or batches}: the batch log holds steps 1..{end} intact, the run trained {trained} "
                "steps; run `trajlab runs verify`, or pass --no-verify"
            )

    def batch_indices(self, step: int) -> Tensor:
        """int64 [global batch] training-set indices of the batch step ``step`` trained on."""
        return self.store.batch_indices(step)

    def batch_record(self, step: int) -> StepBatch:
        """The exact batch step ``step`` trained on: its indices, augmentation seed and tensors."""
        indices = self.store.batch_indices(step)
        seed = self.store.aug_seed(step)
        return StepBatch(step, indices, seed if seed >= 0 else None, self.source.make_batch(indices, seed))

    def batch(self, step: int, device: torch.device | str | None = None) -> Any:
        """The exact global batch step ``step`` trained on (same augmentation draws), as the loss takes it:
        ``(x, y)`` for engine runs, whatever the loop's collate function made for recorded loops."""
        data = self.batch_record(step).data
        return data if device is None else batch_to(data, device)

    def heldout_batches(self, count: int, seed: int = 0) -> list[Any]:
        """The held-out control batches (engine runs: :func:`trajlab.runs.build.heldout_batches`; recorded
        loops: eval-set batches of the training batch size from a fixed seeded order); never trained on."""
        return self.source.heldout_batches(count, seed)

    def recalibration_batches(self, count: int | None = None) -> Iterator[Any]:
        """The batches BatchNorm statistics are recomputed on: training batches from a sampler independent
        of the training order (for engine runs the ones the runner's online averages use)."""
        return self.source.recalibration_batches(self.bn_batches if count is None else count)

    def test_batches(self) -> Iterator[Any]:
        """The whole test (eval) set in order, unaugmented."""
        return self.source.test_batches()

    def train_batches_in_order(self) -> Iterator[Any]:
        """The whole training set in order, unaugmented (full-batch quantities: the exact full gradient)."""
        return self.source.train_batches_in_order()

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
        forward = None if self.kind == "engine" else self.loss_fn
        used, metrics = evaluate_with_bn(model, self.source.evaluate, recal, n, forward=forward)
        return Evaluation(metrics["loss"], metrics["acc"], used)
