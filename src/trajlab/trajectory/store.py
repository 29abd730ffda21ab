"""``TrajectoryStore``: the reading side of a recorded run directory."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import safetensors
import torch
from safetensors.torch import load as parse_safetensors  # bytes -> tensors, no pickle
from torch import nn

from trajlab.trajectory import layout
from trajlab.trajectory.batchlog import BatchLogReader, ChunkScan
from trajlab.trajectory.errors import DamageError, TrajectoryError
from trajlab.trajectory.manifest import ManifestProblem, SnapshotEntry, read_manifest

logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]


class TrajectoryStore:
    """Read a run directory's trajectory: snapshots (memory-mapped safetensors) and the batch log.

    A pure file layer: it reads tensors and the logged batch indices and augmentation seeds, and never
    builds a dataset or a model (rebuilding a step's batch tensors is :meth:`trajlab.runs.RecordedRun.batch`).

    Args:
        run_dir: the run directory (holding ``trajectory/``).

    Raises:
        TrajectoryError: ``trajectory/format.json`` missing or of another format version.

    Example::

        store = TrajectoryStore("runs/fashion")
        for step, state in store.iter_snapshots():   # one snapshot in memory at a time
            model.load_state_dict(state)
        store.batch_indices(500), store.aug_seed(500)  # what step 500 trained on
    """

    def __init__(self, run_dir: str | Path, *, verify: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.verify = verify
        self.traj_dir = self.run_dir / layout.TRAJECTORY_DIR
        layout.check_format_file(self.traj_dir)
        entries, self._manifest_problems = read_manifest(self.traj_dir / layout.MANIFEST_FILE)
        self._by_step: dict[int, SnapshotEntry] = {}
        self._duplicates: list[SnapshotEntry] = []
        for entry in entries:
            if entry.step in self._by_step:
                self._duplicates.append(entry)
            self._by_step[entry.step] = entry
        self._by_step = dict(sorted(self._by_step.items()))
        self._batches = BatchLogReader(self.traj_dir / layout.BATCH_DIR)
        if verify:
            self._refuse_damaged_manifest()

    def _refuse_damaged_manifest(self) -> None:
        """A manifest line that does not parse (other than a torn last line) or a step listed twice is
        damage: which snapshots exist cannot be trusted."""
        bad = [p for p in self._manifest_problems if not p.torn]
        if bad or self._duplicates:
            what = (
                f"line {bad[0].lineno}: {bad[0].message}" if bad else f"step {self._duplicates[0].step} twice"
            )
            raise DamageError(
                f"{self.traj_dir / layout.MANIFEST_FILE}: damaged ({what}); run `trajlab runs verify`, or "
                "pass --no-verify to read the lines that parse"
            )

    # ---- snapshots -------------------------------------------------------------------------------------
    @property
    def manifest(self) -> list[SnapshotEntry]:
        """The manifest entries, one per complete snapshot, in step order."""
        return list(self._by_step.values())

    def steps(self) -> list[int]:
        """Steps that have a snapshot, ascending."""
        return list(self._by_step)

    def entry(self, step: int) -> SnapshotEntry:
        """The manifest entry of ``step``. Raises TrajectoryError naming the nearest steps if absent."""
        if step not in self._by_step:
            steps = self.steps()
            have = f"{len(steps)} snapshots, steps {steps[0]}..{steps[-1]}" if steps else "no snapshots"
            raise TrajectoryError(
                f"{self.traj_dir / layout.MANIFEST_FILE}: no snapshot of step {step} ({have})"
            )
        return self._by_step[step]

    def path(self, step: int) -> Path:
        """The snapshot file of ``step``."""
        return self.traj_dir / self.entry(step).file

    def load(
        self, step: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> StateDict:
        """The state dict saved at ``step`` (parameters and buffers by name).

        The file is read once; its sha256 is checked against the manifest (unless the store was opened with
        ``verify=False``) and the tensors are parsed from the bytes read, so nothing is read twice.

        Args:
            step: a step of :meth:`steps`.
            device: where to put the tensors (default CPU).
            dtype: cast floating-point tensors to this dtype (integer buffers keep theirs); default: as
                stored.

        Raises:
            TrajectoryError: no such step.
            DamageError: file missing, wrong size, sha256 differs, or not a valid safetensors file.
        """
        path = self._checked_path(step)
        try:
            data = path.read_bytes()  # read once: hashed, then parsed from memory
        except OSError as exc:
            raise DamageError(
                f"{path}: cannot read the snapshot of step {step} ({exc.strerror or exc})"
            ) from exc
        if self.verify and hashlib.sha256(data).hexdigest() != self.entry(step).sha256:
            raise DamageError(
                f"{path}: snapshot of step {step} differs from its sha256 in the manifest (altered or "
                "damaged); run `trajlab runs verify`, or pass --no-verify to read it anyway"
            )
        try:
            state = parse_safetensors(data)
        except (safetensors.SafetensorError, OSError, ValueError) as exc:
            raise DamageError(
                f"{path}: corrupt snapshot of step {step} ({exc}); run `trajlab runs verify`"
            ) from exc
        if device is not None and torch.device(device).type != "cpu":
            state = {k: v.to(device) for k, v in state.items()}
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        return state

    def load_into(self, model: nn.Module, step: int) -> nn.Module:
        """Check the snapshot fits ``model`` and load it (into the model's dtypes and device); returns it."""
        self.check_compatible(model, step)
        model.load_state_dict(self.load(step))
        return model

    def iter_snapshots(
        self,
        steps: Iterable[int] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Iterator[tuple[int, StateDict]]:
        """``(step, state dict)`` in step order, loading one snapshot at a time (default: all steps)."""
        for step in sorted(self.steps() if steps is None else steps):
            yield step, self.load(step, device=device, dtype=dtype)

    def check_compatible(self, model: nn.Module, step: int | None = None) -> None:
        """Check the snapshot's tensor names and shapes against ``model.state_dict()`` (header only).

        Args:
            model: the model the snapshot is meant for.
            step: which snapshot (default: the first one).

        Raises:
            TrajectoryError: naming the file, the step and the first mismatches.
        """
        if step is None:
            if not self._by_step:
                raise TrajectoryError(
                    f"{self.traj_dir / layout.MANIFEST_FILE}: no snapshots to check against"
                )
            step = self.steps()[0]
        path = self._checked_path(step)
        try:
            with safetensors.safe_open(str(path), framework="pt") as handle:
                stored = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}  # noqa: SIM118
        except (safetensors.SafetensorError, OSError, ValueError) as exc:
            raise TrajectoryError(f"{path}: corrupt snapshot of step {step} ({exc})") from exc
        expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
        problems = _describe_mismatch(stored, expected)
        if problems:
            raise TrajectoryError(
                f"{path}: snapshot of step {step} does not fit {type(model).__name__}: {problems}"
            )

    def _checked_path(self, step: int) -> Path:
        entry = self.entry(step)
        path = self.traj_dir / entry.file
        if not path.is_file():
            raise DamageError(
                f"{path}: snapshot of step {step} is missing (manifest line {entry.lineno}); "
                "run `trajlab runs verify`"
            )
        size = path.stat().st_size
        if size != entry.bytes:
            raise DamageError(
                f"{path}: snapshot of step {step} has {size} bytes, the manifest says {entry.bytes} "
                "(truncated or altered); run `trajlab runs verify`"
            )
        return path

    # ---- batches ---------------------------------------------------------------------------------------
    def batch_steps(self) -> list[int]:
        """Steps present in the batch log, ascending."""
        return self._batches.steps()

    @property
    def manifest_problems(self) -> list[ManifestProblem]:
        """Manifest lines that could not be read, and duplicated steps' later lines."""
        return list(self._manifest_problems)

    @property
    def duplicate_entries(self) -> list[SnapshotEntry]:
        """Manifest entries whose step was listed earlier too (the later line wins)."""
        return list(self._duplicates)

    def batch_log_scans(self) -> list[tuple[Path, ChunkScan]]:
        """Each batch-log chunk file with the result of reading its records, in step order."""
        return [(path, self._batches.scan(i)[2]) for i, path in enumerate(self._batches.chunk_paths)]

    def batch_log_files(self) -> list[Path]:
        """The batch log's chunk files, in step order."""
        return self._batches.chunk_paths

    def batch_indices(self, step: int) -> torch.Tensor:
        """int64 tensor [global_batch] of the training-set indices of ``B_step`` (step >= 1)."""
        return self._batches.indices(step)

    def aug_seed(self, step: int) -> int:
        """The augmentation seed of ``B_step``."""
        return self._batches.aug_seed(step)


def _describe_mismatch(stored: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]) -> str:
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    shapes = sorted(k for k in set(stored) & set(expected) if stored[k] != expected[k])
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensors missing from the file ({_few(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} tensors the model lacks ({_few(unexpected)})")
    if shapes:
        shown = ", ".join(f"{k}: file {list(stored[k])} vs model {list(expected[k])}" for k in shapes[:3])
        parts.append(f"{len(shapes)} shape mismatches ({shown}{', ...' if len(shapes) > 3 else ''})")
    return "; ".join(parts)


def _few(names: list[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
