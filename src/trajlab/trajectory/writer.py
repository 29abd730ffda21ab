"""Asynchronous, atomic snapshot writing: a background thread behind a bounded queue.

The training thread copies the state dict off the live tensors (:func:`copy_state_dict`) and enqueues it;
the writer thread serialises it to safetensors, writes it atomically (temp file, fsync, rename, fsync dir)
and only then appends its manifest line. When the queue is full, ``submit`` blocks (back-pressure: memory
stays bounded at ``queue_size + 1`` snapshots). A write error is kept and raised in the training thread by
the next ``submit``/``check``/``flush`` as a :class:`TrajectoryError` naming the file; snapshots after a
failed one are dropped (never half written), and every completed one stays intact.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from trajlab.trajectory import layout
from trajlab.trajectory.errors import TrajectoryError
from trajlab.trajectory.layout import FORMAT_NAME, FORMAT_VERSION, MANIFEST_FILE, snapshot_relpath

logger = logging.getLogger(__name__)

SNAPSHOT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class SnapshotJob:
    """One snapshot on its way to disk.

    Attributes:
        step, epoch, lr: what the manifest line records.
        tensors: ``{name: CPU tensor}``, private copies (pinned when copied from CUDA).
        dtype: name of the floating-point storage dtype (``"float32"`` or ``"bfloat16"``).
        ready: CUDA event recorded after the non-blocking device-to-host copies, or ``None``.
    """

    step: int
    epoch: float
    lr: float
    tensors: dict[str, torch.Tensor]
    dtype: str
    ready: Any = None


def copy_state_dict(model: torch.nn.Module, dtype: str = "float32") -> tuple[dict[str, torch.Tensor], Any]:
    """Copy the model's parameters and buffers off the training tensors.

    Floating-point tensors are stored in ``dtype``; integer buffers (``num_batches_tracked``) keep theirs.
    From CUDA, the copies go non-blocking into pinned host memory (PyTorch's caching host allocator reuses
    it); the returned event marks when they are complete. Kernels enqueued later on the same stream (the next
    optimizer step) cannot overtake the copies, so the copy holds exactly ``theta_t``.

    Returns:
        ``({name: CPU tensor}, event or None)``.
    """
    target = SNAPSHOT_DTYPES[dtype]
    out: dict[str, torch.Tensor] = {}
    uses_cuda = False
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach()
        want = target if tensor.is_floating_point() else tensor.dtype
        if tensor.device.type == "cuda":
            uses_cuda = True
            host = torch.empty(tensor.shape, dtype=want, pin_memory=True)
            host.copy_(tensor.to(want), non_blocking=True)
        else:
            # One copy, straight into the row-major layout safetensors stores (channels_last weights too).
            host = tensor.to(device="cpu", dtype=want, copy=True, memory_format=torch.contiguous_format)
        out[name] = host
    ready = None
    if uses_cuda:
        ready = torch.cuda.Event()
        ready.record()
    return out, ready


def raw_tensor_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """Sum of ``numel * element_size`` (the payload a snapshot file must hold)."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


METADATA_KEY = "trajlab"


def snapshot_metadata(step: int, epoch: float, lr: float) -> dict[str, str]:
    """The safetensors ``__metadata__`` of a snapshot: one key holding a JSON object.

    One key, because safetensors writes the metadata map in hash order, which changes from process to
    process; a resumed run must write byte-identical files.
    """
    fields = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "step": step, "epoch": epoch, "lr": lr}
    return {METADATA_KEY: json.dumps(fields)}


def read_snapshot_metadata(metadata: dict[str, str] | None) -> dict[str, Any]:
    """Parse :func:`snapshot_metadata`'s form back (``{}`` when absent)."""
    raw = (metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def serialize_snapshot(job: SnapshotJob) -> bytes:
    """The safetensors bytes of ``job`` (header with tensor names/dtypes/shapes + raw little-endian data)."""
    return safetensors.torch.save(job.tensors, metadata=snapshot_metadata(job.step, job.epoch, job.lr))


def manifest_line(job: SnapshotJob, sha256: str, size: int) -> str:
    """One manifest JSON line (keys in a fixed order so a resumed run writes identical bytes)."""
    entry = {
        "step": job.step,
        "epoch": _finite(job.epoch),
        "lr": _finite(job.lr),
        "file": snapshot_relpath(job.step),
        "sha256": sha256,
        "bytes": size,
        "dtype": job.dtype,
    }
    return json.dumps(entry)


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


_STOP = object()


class SnapshotWriter:
    """Background thread that writes snapshots into ``traj_dir`` in submission order.

    Args:
        traj_dir: ``RUN/trajectory`` (``snapshots/`` must exist).
        queue_size: snapshots that may wait in memory before ``submit`` blocks.
    """

    def __init__(self, traj_dir: Path, queue_size: int = 2) -> None:
        if queue_size < 1:
            raise TrajectoryError(f"snapshot writer: queue_size must be >= 1, got {queue_size}")
        self.traj_dir = traj_dir
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._error: TrajectoryError | None = None
        self._thread = threading.Thread(target=self._run, name="trajlab-snapshot-writer", daemon=True)
        self._thread.start()
        self.bytes_written = 0
        self.snapshots_written = 0

    def submit(self, job: SnapshotJob) -> None:
        """Enqueue ``job``; blocks while the queue is full. Raises a pending writer error first."""
        self.check()
        if not self._thread.is_alive():
            raise TrajectoryError(f"{self.traj_dir}: snapshot writer is closed; cannot save step {job.step}")
        self._queue.put(job)

    def check(self) -> None:
        """Raise the writer thread's error, if it had one."""
        if self._error is not None:
            raise self._error

    def flush(self) -> None:
        """Wait until every submitted snapshot is on disk with its manifest line; raise a writer error."""
        self._queue.join()
        self.check()

    def close(self) -> None:
        """Flush and stop the thread; raise a writer error. Idempotent."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        self.check()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is _STOP:
                    return
                if self._error is None:  # after a failure, drain without writing (keeps submit from blocking)
                    self._write(job)
            except BaseException as exc:  # noqa: BLE001 (any failure is reported to the training thread)
                self._error = _as_trajectory_error(exc, self.traj_dir / snapshot_relpath(job.step), job.step)
                logger.error("%s", self._error)
            finally:
                self._queue.task_done()

    def _write(self, job: SnapshotJob) -> None:
        if job.ready is not None:
            job.ready.synchronize()
        data = serialize_snapshot(job)
        sha = hashlib.sha256(data).hexdigest()
        path = self.traj_dir / snapshot_relpath(job.step)
        layout.write_file_atomic(path, data)
        # The manifest line comes only after the file is complete and renamed into place.
        layout.append_line_durable(self.traj_dir / MANIFEST_FILE, manifest_line(job, sha, len(data)))
        self.bytes_written += len(data)
        self.snapshots_written += 1


def _as_trajectory_error(exc: BaseException, path: Path, step: int) -> TrajectoryError:
    if isinstance(exc, TrajectoryError):
        return exc
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    error = TrajectoryError(
        f"{path}: could not write the snapshot of step {step} ({reason}); the snapshots listed in "
        f"{path.parent.parent / MANIFEST_FILE} are complete, free space or fix permissions and resume"
    )
    error.__cause__ = exc
    return error
