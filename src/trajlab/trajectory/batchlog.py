"""The batch log: for every step t, the global batch's sample indices (``B_t``) and augmentation seed.

Binary, chunked by step: chunk files ``batches/chunk_{first_step:09d}.bin`` hold the records of steps
``first_step .. first_step + chunk_steps - 1`` (``first_step = k * chunk_steps + 1``; fixed boundaries,
so a resumed run writes the same files as an uninterrupted one). A chunk file is::

    magic  b"TLBLOG\\x00\\x01"                                               8 bytes
    record*:  step int64 | aug_seed int64 | n uint32 | itemsize uint16 (4|8) | 0 uint16
              | crc32 uint32 (of the 24 bytes before it + payload) | 0 uint32      32 bytes
              payload: n little-endian int32 or int64 indices                 n * itemsize bytes

Records are appended with one ``write`` each (a SIGKILL leaves whole records; a power loss may leave a torn
last record, which readers drop). int32 is used whenever every index fits, halving the size.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trajlab.trajectory.errors import DamageError, TrajectoryError
from trajlab.trajectory.layout import CHUNK_RE, chunk_name, fsync_dir, steps_in_dir

logger = logging.getLogger(__name__)

MAGIC = b"TLBLOG\x00\x01"
_HEAD = struct.Struct("<qqIHH")  # step, aug_seed, n, itemsize, reserved: 24 bytes covered by the crc
_TAIL = struct.Struct("<II")  # crc32, reserved
RECORD_HEADER_BYTES = _HEAD.size + _TAIL.size
DEFAULT_CHUNK_STEPS = 1000
_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class BatchRecord:
    """Where one step's record lies in its chunk file."""

    step: int
    aug_seed: int
    n: int
    itemsize: int
    payload_offset: int


@dataclass
class ChunkScan:
    """Result of reading one chunk file's records.

    Attributes:
        records: the intact records, in file order.
        end_offset: byte offset just past the last intact record (where a resumed writer appends).
        problem: why reading stopped early (bad magic, torn or corrupt record), or ``None``.
        torn_tail: the problem is an incomplete last record (a killed or power-cut writer), not corruption.
    """

    records: list[BatchRecord]
    end_offset: int
    problem: str | None = None
    torn_tail: bool = False


def encode_record(step: int, indices: torch.Tensor, aug_seed: int) -> bytes:
    """One record's bytes. ``indices``: int tensor [global_batch] on any device."""
    array = indices.detach().to("cpu").numpy().reshape(-1)
    if array.size and (array.min() < 0 or array.max() > _INT32_MAX):
        array = array.astype("<i8", copy=False)
    else:
        array = array.astype("<i4", copy=False)
    payload = array.tobytes()
    head = _HEAD.pack(step, aug_seed, array.size, array.itemsize, 0)
    crc = zlib.crc32(payload, zlib.crc32(head))
    return head + _TAIL.pack(crc, 0) + payload


def scan_chunk(data: bytes | memoryview) -> ChunkScan:
    """Parse a chunk file's bytes into records, stopping at the first torn or corrupt one."""
    if len(data) < len(MAGIC) or bytes(data[: len(MAGIC)]) != MAGIC:
        torn = len(data) < len(MAGIC) and MAGIC.startswith(bytes(data))
        return ChunkScan([], 0, "not a trajlab batch-log chunk (bad magic bytes)", torn_tail=torn)
    records: list[BatchRecord] = []
    offset = len(MAGIC)
    while offset < len(data):
        if offset + RECORD_HEADER_BYTES > len(data):
            return ChunkScan(records, offset, f"incomplete record header at byte {offset}", torn_tail=True)
        step, seed, n, itemsize, _ = _HEAD.unpack_from(data, offset)
        (crc,) = struct.unpack_from("<I", data, offset + _HEAD.size)
        payload_offset = offset + RECORD_HEADER_BYTES
        end = payload_offset + n * itemsize
        if itemsize not in (4, 8):
            return ChunkScan(records, offset, f"corrupt record header at byte {offset} (itemsize {itemsize})")
        if end > len(data):
            return ChunkScan(
                records, offset, f"incomplete record for step {step} at byte {offset}", torn_tail=True
            )
        head = bytes(data[offset : offset + _HEAD.size])
        if zlib.crc32(data[payload_offset:end], zlib.crc32(head)) != crc:
            return ChunkScan(
                records, offset, f"corrupt record (crc mismatch) at byte {offset}, step field {step}"
            )
        records.append(BatchRecord(step, seed, n, itemsize, payload_offset))
        offset = end
    return ChunkScan(records, offset)


def decode_indices(data: bytes | memoryview, record: BatchRecord) -> torch.Tensor:
    """The int64 index tensor [n] of ``record`` from its chunk's bytes."""
    dtype = "<i4" if record.itemsize == 4 else "<i8"
    array = np.frombuffer(data, dtype=dtype, count=record.n, offset=record.payload_offset)
    return torch.from_numpy(array.astype(np.int64))


class BatchLogWriter:
    """Appends one record per step to the chunk files of ``batch_dir`` (rank 0 only; training thread).

    Args:
        batch_dir: ``RUN/trajectory/batches``.
        chunk_steps: steps per chunk file.
    """

    def __init__(self, batch_dir: Path, chunk_steps: int = DEFAULT_CHUNK_STEPS) -> None:
        if chunk_steps < 1:
            raise TrajectoryError(f"batch log: chunk_steps must be >= 1, got {chunk_steps}")
        self.batch_dir = batch_dir
        self.chunk_steps = chunk_steps
        self._fd: int | None = None
        self._chunk_first: int | None = None
        self.last_step: int | None = None

    def chunk_first_step(self, step: int) -> int:
        """First step of the chunk holding ``step`` (step >= 1)."""
        return ((step - 1) // self.chunk_steps) * self.chunk_steps + 1

    def append(self, step: int, indices: torch.Tensor, aug_seed: int) -> None:
        """Log ``B_step``. Raises TrajectoryError naming the chunk file on an OS error."""
        first = self.chunk_first_step(step)
        path = self.batch_dir / chunk_name(first)
        try:
            if first != self._chunk_first:
                self._open_chunk(first)
            assert self._fd is not None
            os.write(self._fd, encode_record(step, indices, aug_seed))
        except OSError as exc:
            raise TrajectoryError(
                f"{path}: cannot write the batch log for step {step} ({exc.strerror or exc})"
            ) from exc
        self.last_step = step

    def _open_chunk(self, first: int) -> None:
        self.close()
        path = self.batch_dir / chunk_name(first)
        exists = path.exists() and path.stat().st_size >= len(MAGIC)
        # Never through a symlink planted in the run directory; the umask decides the mode.
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        self._chunk_first = first
        if not exists:
            os.ftruncate(self._fd, 0)
            os.write(self._fd, MAGIC)
            fsync_dir(self.batch_dir)

    def sync(self) -> None:
        """fsync the open chunk (records survive a power loss, not only a killed process)."""
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        """fsync and close the open chunk."""
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = None
                self._chunk_first = None


def truncate_batch_log(
    batch_dir: Path,
    last_step: int,
    *,
    move: Callable[[Path], None] | None = None,
    keep: Callable[[str, bytes], None] | None = None,
) -> int | None:
    """Drop every record after ``last_step`` (and torn tails) so a resumed run can append from there.

    Args:
        batch_dir: ``RUN/trajectory/batches``.
        last_step: the last step to keep.
        move: called with each whole chunk file past ``last_step`` (to set it aside; default: unlink).
        keep: called with (chunk name, removed bytes) for each chunk cut short (to set them aside).

    Returns:
        The last step left in the log, or ``None`` when it is empty.
    """
    last_kept: int | None = None
    for first, path in sorted(steps_in_dir(batch_dir, CHUNK_RE).items()):
        if first > last_step:
            move(path) if move is not None else path.unlink()
            continue
        data = path.read_bytes()
        scan = scan_chunk(data)
        keep_end = len(MAGIC) if scan.records or scan.end_offset else 0
        for record in scan.records:
            if record.step > last_step:
                break
            keep_end = record.payload_offset + record.n * record.itemsize
            last_kept = record.step
        if scan.problem and not scan.torn_tail:
            logger.warning("%s: %s; the batch log is kept only up to the damage", path, scan.problem)
        if keep_end < len(data) and keep is not None:
            keep(path.name, data[keep_end:])
        if keep_end == 0:
            path.unlink()
        elif keep_end < len(data):
            os.truncate(path, keep_end)
    fsync_dir(batch_dir)
    return last_kept


class BatchLogReader:
    """Random access to the batch log of ``batch_dir`` (chunks are indexed on first use and cached)."""

    def __init__(self, batch_dir: Path) -> None:
        self.batch_dir = batch_dir
        chunks = steps_in_dir(batch_dir, CHUNK_RE)
        self._firsts = sorted(chunks)
        self._paths = [chunks[f] for f in self._firsts]
        self._cache: dict[int, tuple[bytes, dict[int, BatchRecord], ChunkScan]] = {}

    @property
    def chunk_paths(self) -> list[Path]:
        """Chunk files in step order."""
        return list(self._paths)

    def scan(self, position: int) -> tuple[bytes, dict[int, BatchRecord], ChunkScan]:
        """Bytes, ``{step: record}`` and scan result of the chunk at ``position`` (cached)."""
        if position not in self._cache:
            data = self._paths[position].read_bytes()
            scan = scan_chunk(data)
            self._cache = {position: (data, {r.step: r for r in scan.records}, scan)}  # keep one chunk
        return self._cache[position]

    def record(self, step: int) -> tuple[bytes, BatchRecord]:
        """The chunk bytes and record of ``step``. Raises TrajectoryError when the step is not logged."""
        position = bisect_right(self._firsts, step) - 1
        if step < 1 or position < 0:
            raise TrajectoryError(f"{self.batch_dir}: no batch-log record for step {step} (steps start at 1)")
        data, by_step, scan = self.scan(position)
        if step not in by_step:
            if scan.problem and (not scan.records or step > scan.records[-1].step):
                raise DamageError(
                    f"{self._paths[position]}: the batch-log record of step {step} is damaged "
                    f"({scan.problem}); run `trajlab runs verify`"
                )
            raise TrajectoryError(f"{self._paths[position]}: no batch-log record for step {step}")
        return data, by_step[step]

    def indices(self, step: int) -> torch.Tensor:
        """int64 tensor [global_batch] of ``B_step``'s training-set indices."""
        data, record = self.record(step)
        return decode_indices(data, record)

    def aug_seed(self, step: int) -> int:
        """Augmentation seed of ``B_step``."""
        return self.record(step)[1].aug_seed

    def steps(self) -> list[int]:
        """Every logged step, ascending (reads every chunk)."""
        out: list[int] = []
        for position in range(len(self._paths)):
            out.extend(r.step for r in self.scan(position)[2].records)
        return out
