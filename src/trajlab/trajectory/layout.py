"""Paths of the trajectory part of a run directory, the format marker, and atomic file writes.

Layout (all under ``RUN/``)::

    trajectory/format.json                        {"format": "trajlab-trajectory", "version": 1}
    trajectory/manifest.jsonl                     one JSON line per complete snapshot
    trajectory/snapshots/step_{step:09d}.safetensors
    trajectory/batches/chunk_{first_step:09d}.bin  batch log (see ``batchlog.py``)
    checkpoints/ckpt_{step:09d}.pt                training checkpoints (+ ``.sha256`` next to each)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path

from trajlab import files
from trajlab.trajectory.errors import TrajectoryError

FORMAT_NAME = "trajlab-trajectory"
FORMAT_VERSION = 1

TRAJECTORY_DIR = "trajectory"
FORMAT_FILE = "format.json"
MANIFEST_FILE = "manifest.jsonl"
SNAPSHOT_DIR = "snapshots"
BATCH_DIR = "batches"
CHECKPOINT_DIR = "checkpoints"

SNAPSHOT_RE = re.compile(r"^step_(\d{9,})\.safetensors$")
CHUNK_RE = re.compile(r"^chunk_(\d{9,})\.bin$")
CHECKPOINT_RE = re.compile(r"^ckpt_(\d{9,})\.pt$")
# Temporary files of an atomic write start with "." and end with ".tmp"; a killed writer leaves them.
TMP_SUFFIX = ".tmp"


def snapshot_relpath(step: int) -> str:
    """Manifest ``file`` field of the snapshot of ``step``, relative to ``RUN/trajectory``."""
    return f"{SNAPSHOT_DIR}/step_{step:09d}.safetensors"


def chunk_name(first_step: int) -> str:
    """File name of the batch-log chunk whose first record is ``first_step``."""
    return f"chunk_{first_step:09d}.bin"


def checkpoint_name(step: int) -> str:
    """File name of the training checkpoint taken after ``step``."""
    return f"ckpt_{step:09d}.pt"


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_file_atomic(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` so that a reader sees either no file or the complete file.

    :func:`trajlab.files.write_bytes_atomic`: a temporary file next to it (``O_EXCL | O_NOFOLLOW``),
    fsynced, renamed over ``path``, the directory fsynced. A killed process leaves at most a
    ``.<name>.*.tmp`` file, never a partial ``path``.

    Raises:
        OSError: from the file system (:class:`trajlab.files.DiskFullError` when out of space); the
            temporary file is removed.
    """
    files.write_bytes_atomic(path, data)


def append_line_durable(path: Path, line: str) -> None:
    """Append one line with a single ``write`` (O_APPEND, never through a symlink) and fsync it.

    One ``write`` of a short line is not split by a SIGKILL, so the manifest never holds half a line from
    a killed process (readers still tolerate a torn last line, e.g. after a power loss).
    """
    with files.open_append(path) as fd:
        files.write_all(fd, (line.rstrip("\n") + "\n").encode(), path)
        os.fsync(fd)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def write_format_file(traj_dir: Path) -> None:
    """Write ``format.json`` unless present; raise when a present one is of another format or version."""
    path = traj_dir / FORMAT_FILE
    if path.exists():
        check_format_file(traj_dir)
        return
    text = json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION}) + "\n"
    write_file_atomic(path, text.encode())


def check_format_file(traj_dir: Path) -> None:
    """Check ``format.json`` names this format and version.

    Raises:
        TrajectoryError: missing, unreadable, or written by another format or version.
    """
    path = traj_dir / FORMAT_FILE
    if not path.exists():
        raise TrajectoryError(
            f"{path}: missing; {traj_dir.parent} is not a trajlab run directory with a trajectory"
        )
    try:
        marker = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TrajectoryError(
            f"{path}: unreadable ({exc}); expected {{'format': {FORMAT_NAME!r}, ...}}"
        ) from None
    if not isinstance(marker, dict) or marker.get("format") != FORMAT_NAME:
        raise TrajectoryError(f"{path}: not a {FORMAT_NAME} marker (found {marker!r})")
    if marker.get("version") != FORMAT_VERSION:
        raise TrajectoryError(
            f"{path}: written by {FORMAT_NAME} version {marker.get('version')!r}, this trajlab reads version "
            f"{FORMAT_VERSION}; use the trajlab version that wrote it"
        )


def steps_in_dir(directory: Path, pattern: re.Pattern[str]) -> dict[int, Path]:
    """``{step: path}`` of the files in ``directory`` whose names match ``pattern`` (empty if no dir)."""
    if not directory.is_dir():
        return {}
    found: dict[int, Path] = {}
    for path in directory.iterdir():
        match = pattern.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return found
