"""The ``Recorder`` callback: weight snapshots on a schedule and the batch log, written while training."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import safetensors
import torch

from trajlab.train.callbacks import CallbackBase, StepContext
from trajlab.trajectory import layout
from trajlab.trajectory.batchlog import DEFAULT_CHUNK_STEPS, BatchLogWriter, truncate_batch_log
from trajlab.trajectory.errors import TrajectoryError
from trajlab.trajectory.manifest import read_manifest, rewrite_manifest
from trajlab.trajectory.quarantine import Quarantine
from trajlab.trajectory.schedule import SnapshotSchedule
from trajlab.trajectory.writer import (
    SNAPSHOT_DTYPES,
    SnapshotJob,
    SnapshotWriter,
    copy_state_dict,
    manifest_line,
    read_snapshot_metadata,
)

logger = logging.getLogger(__name__)


class Recorder(CallbackBase):
    """Records the training trajectory into ``RUN/trajectory`` (only rank 0 writes).

    * ``on_train_start``: fresh run: writes ``format.json`` and ``theta_0`` (if the schedule includes
      step 0). Resumed run at step s: drops manifest lines, snapshots and batch-log records after s (a
      killed run may have written past its checkpoint) so the continuation rewrites them identically.
    * ``on_step``: appends ``(B_t indices, aug seed)`` to the batch log; when the schedule selects t,
      copies the state dict off the training tensors and hands it to the writer thread.
    * ``state_dict``: flushes the writer first, so a checkpoint taken after it never refers to a snapshot
      that is not on disk. Put the Recorder **before** the Checkpointer in the callback list.
    * ``on_train_end``: flushes and joins the writer.

    Args:
        run_dir: the run directory (the recorder writes ``run_dir/trajectory``).
        schedule: a :class:`SnapshotSchedule` or its config dict (``record.snapshots``).
        dtype: ``"float32"`` (default) or ``"bfloat16"`` (or the torch dtype) for floating-point
            tensors; integer buffers keep their dtype.
        log_batches: write the batch log.
        queue_size: snapshots waiting in memory before training blocks (back-pressure).
        chunk_steps: steps per batch-log chunk file.
    """

    name = "recorder"

    def __init__(
        self,
        run_dir: str | Path,
        schedule: SnapshotSchedule | dict[str, Any] | None = None,
        *,
        dtype: str | torch.dtype = "float32",
        log_batches: bool = True,
        queue_size: int = 2,
        chunk_steps: int = DEFAULT_CHUNK_STEPS,
    ) -> None:
        if isinstance(dtype, torch.dtype):
            dtype = str(dtype).removeprefix("torch.")
        if dtype not in SNAPSHOT_DTYPES:
            raise TrajectoryError(f"recorder: dtype must be one of {sorted(SNAPSHOT_DTYPES)}, got {dtype!r}")
        self.run_dir = Path(run_dir)
        self.traj_dir = self.run_dir / layout.TRAJECTORY_DIR
        self.schedule = SnapshotSchedule.parse(schedule)
        self.dtype = dtype
        self.log_batches = log_batches
        self.queue_size = queue_size
        self.chunk_steps = chunk_steps
        self._writer: SnapshotWriter | None = None
        self._batch_log: BatchLogWriter | None = None
        self._active = False
        self.last_saved_step: int | None = None

    # ---- hooks -----------------------------------------------------------------------------------------
    def on_train_start(self, ctx: StepContext) -> None:
        """Prepare the directory (or truncate it to ``ctx.step`` on resume) and save ``theta_0``."""
        self._active = ctx.rank == 0
        if not self._active:
            return
        self._make_dirs()
        if ctx.is_resumed_start:
            self._truncate_after(ctx.step)
        else:
            self._refuse_existing_trajectory()
        self._writer = SnapshotWriter(self.traj_dir, self.queue_size)
        if self.log_batches:
            self._batch_log = BatchLogWriter(self.traj_dir / layout.BATCH_DIR, self.chunk_steps)
        if self.schedule.should_save(ctx.step) and not self._snapshot_listed(ctx.step):
            # Fresh run: theta_0. Resumed run: only if the snapshot of the checkpoint's step was lost.
            self._save(ctx)

    def on_step(self, ctx: StepContext) -> None:
        """Log ``B_t`` and, when scheduled, hand a copy of ``theta_t`` to the writer thread."""
        if not self._active:
            return
        assert self._writer is not None, "Recorder.on_step called before on_train_start"
        self._writer.check()
        if self._batch_log is not None:
            self._batch_log.append(ctx.step, ctx.batch_indices, int(ctx.aug_seed))
        if self.schedule.should_save(ctx.step):
            self._save(ctx)

    def on_train_end(self, ctx: StepContext) -> None:
        """Flush everything to disk and stop the writer; raises a pending write error."""
        if not self._active:
            return
        self._active = False
        try:
            if self._batch_log is not None:
                self._batch_log.close()
        finally:
            if self._writer is not None:
                self._writer.close()

    def state_dict(self) -> dict[str, Any]:
        """Flush pending snapshots (a checkpoint must not outrun them) and return the settings."""
        if self._active:
            assert self._writer is not None
            self._writer.flush()
            if self._batch_log is not None:
                self._batch_log.sync()
        return {
            "schedule": self.schedule.to_dict(),
            "dtype": self.dtype,
            "last_saved_step": self.last_saved_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from a checkpoint; warns when the run now records with other settings."""
        if (
            state.get("schedule") not in (None, self.schedule.to_dict())
            or state.get("dtype", self.dtype) != self.dtype
        ):
            logger.warning(
                "recorder: the checkpoint was recorded with schedule %s (dtype %s), this run uses %s "
                "(dtype %s); snapshots after the resume step follow the new settings",
                state.get("schedule"),
                state.get("dtype"),
                self.schedule.to_dict(),
                self.dtype,
            )
        self.last_saved_step = state.get("last_saved_step")

    # ---- internals -------------------------------------------------------------------------------------
    def _make_dirs(self) -> None:
        try:
            for sub in (layout.SNAPSHOT_DIR, layout.BATCH_DIR):
                (self.traj_dir / sub).mkdir(parents=True, exist_ok=True)
            layout.write_format_file(self.traj_dir)
        except OSError as exc:
            raise TrajectoryError(
                f"{self.traj_dir}: cannot create the trajectory directory ({exc.strerror or exc}); "
                "choose a writable run directory"
            ) from exc

    def _refuse_existing_trajectory(self) -> None:
        entries, _ = read_manifest(self.traj_dir / layout.MANIFEST_FILE)
        chunks = layout.steps_in_dir(self.traj_dir / layout.BATCH_DIR, layout.CHUNK_RE)
        if entries or chunks:
            raise TrajectoryError(
                f"{self.traj_dir}: already holds a trajectory ({len(entries)} snapshots); resume the run "
                "(--resume) or record into a new run directory"
            )

    def _truncate_after(self, step: int) -> None:
        """Make the trajectory end at ``step``: what a killed run wrote past its checkpoint is set aside
        in ``RUN/quarantine/`` (never deleted), and the resume says so."""
        quarantine = Quarantine(self.run_dir, step)
        manifest_path = self.traj_dir / layout.MANIFEST_FILE
        entries, _ = read_manifest(manifest_path)
        kept = {e.step: e.line for e in entries if e.step <= step}
        removed_lines = [e.line for e in entries if e.step > step]
        snapshots = layout.steps_in_dir(self.traj_dir / layout.SNAPSHOT_DIR, layout.SNAPSHOT_RE)
        for snap_step, path in snapshots.items():
            if snap_step > step:
                quarantine.move(path)
            elif snap_step not in kept:
                # Killed between the rename and the manifest append: the file is complete, list it.
                line = _manifest_line_from_file(path, snap_step, quarantine)
                if line is not None:
                    kept[snap_step] = line
        for path in (self.traj_dir / layout.SNAPSHOT_DIR).glob(f".*{layout.TMP_SUFFIX}"):
            quarantine.move(path)
        quarantine.keep(
            f"{layout.TRAJECTORY_DIR}/{layout.MANIFEST_FILE}",
            "".join(f"{x}\n" for x in removed_lines).encode(),
        )
        rewrite_manifest(manifest_path, [kept[s] for s in sorted(kept)])
        batch_rel = f"{layout.TRAJECTORY_DIR}/{layout.BATCH_DIR}"
        last = truncate_batch_log(
            self.traj_dir / layout.BATCH_DIR,
            step,
            move=quarantine.move,
            keep=lambda name, data: quarantine.keep(f"{batch_rel}/{name}", data),
        )
        quarantine.report()
        if self.log_batches and step > 0 and last != step:
            logger.warning(
                "%s: batch log ends at step %s, the run resumes after step %d; steps in between are missing",
                self.traj_dir / layout.BATCH_DIR,
                last,
                step,
            )
        logger.info(
            "recorder: trajectory truncated to step %d for resume (%d snapshots kept)", step, len(kept)
        )

    def _snapshot_listed(self, step: int) -> bool:
        entries, _ = read_manifest(self.traj_dir / layout.MANIFEST_FILE)
        return any(e.step == step for e in entries)

    def _save(self, ctx: StepContext) -> None:
        assert self._writer is not None
        tensors, ready = copy_state_dict(ctx.model, self.dtype)
        self._writer.submit(
            SnapshotJob(ctx.step, float(ctx.epoch), float(ctx.lr), tensors, self.dtype, ready)
        )
        self.last_saved_step = ctx.step


def _manifest_line_from_file(path: Path, step: int, quarantine: Quarantine) -> str | None:
    """Rebuild the manifest line of a complete snapshot file from its safetensors metadata."""
    try:
        data = path.read_bytes()
        with safetensors.safe_open(str(path), framework="pt") as handle:
            meta = read_snapshot_metadata(handle.metadata())
            dtypes = {str(handle.get_slice(k).get_dtype()) for k in handle.keys()}  # noqa: SIM118 (a safe_open handle)
        dtype = "bfloat16" if "BF16" in dtypes else "float32"
        job = SnapshotJob(step, float(meta["epoch"]), float(meta["lr"]), {}, dtype)
    except (OSError, KeyError, ValueError, safetensors.SafetensorError) as exc:
        logger.warning("%s: unlisted snapshot is unreadable (%s); setting it aside", path, exc)
        quarantine.move(path)
        return None
    return manifest_line(job, hashlib.sha256(data).hexdigest(), len(data))
