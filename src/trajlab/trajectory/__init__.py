"""The recorded training trajectory: weight snapshots, batch log, checkpoints, and reading them back.

Writing (callbacks for :class:`trajlab.train.engine.Trainer`): :class:`Recorder` (snapshots on a
:class:`SnapshotSchedule`, batch log; asynchronous and atomic) and :class:`Checkpointer` (resumable
trainer state, pruned). Reading: :class:`TrajectoryStore`. CLI helpers: :func:`summarize_run`,
:func:`format_summary`, :func:`verify_run`. See ``layout.py`` for the run directory layout.
"""

from trajlab.trajectory.checkpoint import (
    Checkpointer,
    list_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
    save_checkpoint,
)
from trajlab.trajectory.errors import DamageError, TrajectoryError
from trajlab.trajectory.manifest import SnapshotEntry
from trajlab.trajectory.recorder import Recorder
from trajlab.trajectory.schedule import DenseWindow, SnapshotSchedule
from trajlab.trajectory.store import TrajectoryStore
from trajlab.trajectory.summary import describe_steps, format_summary, summarize_run
from trajlab.trajectory.verify import Problem, VerifyReport
from trajlab.trajectory.verify_run import report_dict, verify_run

__all__ = [
    "Checkpointer",
    "DamageError",
    "DenseWindow",
    "Problem",
    "Recorder",
    "SnapshotEntry",
    "SnapshotSchedule",
    "TrajectoryError",
    "TrajectoryStore",
    "VerifyReport",
    "describe_steps",
    "format_summary",
    "list_checkpoints",
    "load_checkpoint",
    "load_latest_checkpoint",
    "save_checkpoint",
    "summarize_run",
    "report_dict",
    "verify_run",
]
