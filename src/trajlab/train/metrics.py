"""metrics.jsonl: one JSON object per line, appended and flushed as training goes.

Rows carry ``kind`` (``train`` or ``eval``) and ``step``, and ``crc``: the CRC-32 of the row's JSON
without it, so a reader finds a flipped bit in any row (:func:`read_metrics` raises for it; a torn last
line, what a kill leaves, is skipped). On resume from step s, rows with ``step > s`` written by the
interrupted process are set aside first, so the file ends up identical (but for the wall-time fields) to
that of an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from pathlib import Path
from typing import Any

from trajlab.files import write_text_atomic

# Fields that differ between two identical runs (timings, and the row CRC that covers them).
TIME_FIELDS = ("wall_s", "images_per_s", "crc")


class MetricsDamaged(ValueError):
    """A row of metrics.jsonl does not match its CRC (altered or damaged); the message names the line."""


def _crc(body: str) -> int:
    return zlib.crc32(body.encode("utf-8"))


def encode_row(row: dict[str, Any]) -> str:
    """One JSON line with its ``crc`` field last."""
    body = json.dumps({k: _clean(v) for k, v in row.items() if k != "crc"})
    return body[:-1] + f', "crc": {_crc(body)}}}' if body != "{}" else f'{{"crc": {_crc(body)}}}'


def decode_row(line: str) -> dict[str, Any]:
    """The row of a line, its CRC checked (rows written before CRCs existed are taken as they are).

    Raises:
        ValueError: not JSON, or the CRC differs.
    """
    row = json.loads(line)
    if not isinstance(row, dict):
        raise ValueError("not a JSON object")
    if "crc" in row:
        crc = row.pop("crc")
        if _crc(json.dumps(row)) != crc:
            raise ValueError("CRC differs from the row (altered or damaged)")
    return row


def _clean(value: Any) -> Any:
    # JSON has no NaN/inf: write them as strings so the file stays valid JSON for every reader.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def tensorboard_installed() -> bool:
    """Whether the optional ``tensorboard`` package can be imported (the metrics are mirrored then)."""
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


class MetricsLog:
    """Append-only JSONL writer, with optional TensorBoard mirroring."""

    def __init__(self, path: str | os.PathLike, *, tensorboard_dir: str | os.PathLike | None = None) -> None:
        self.path = Path(path)
        # Appends never follow a symlink planted in the run directory; the umask decides the mode.
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        self._fh = os.fdopen(os.open(self.path, flags, 0o666), "a", encoding="utf-8")
        self._tb = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:  # tensorboard is an optional extra
                raise ValueError(
                    "train.tensorboard=true needs the tensorboard package: pip install 'trajlab[tensorboard]'"
                ) from e
            self._tb = SummaryWriter(str(tensorboard_dir))

    def __call__(self, row: dict[str, Any]) -> None:
        self._fh.write(encode_row(row) + "\n")
        self._fh.flush()
        if self._tb is not None:
            for key, value in row.items():
                if key not in ("kind", "step") and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{row.get('kind', 'metrics')}/{key}", value, row["step"])

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()


def truncate_after(path: str | os.PathLike, step: int) -> tuple[int, list[str]]:
    """Keep the rows with ``step <= step`` of ``path`` (atomically); return (rows kept, the lines removed).

    A torn last line (a kill mid-append) is removed too. The caller keeps the removed lines (quarantine).
    """
    path = Path(path)
    if not path.exists():
        return 0, []
    kept, removed = [], []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        try:
            row = decode_row(line)
        except ValueError:
            if i < len(lines) - 1:
                raise MetricsDamaged(
                    f"{path}: line {i + 1} is damaged; run `trajlab runs verify` (resume refuses to drop it)"
                ) from None
            removed.append(line)
            continue
        (kept if int(row.get("step", 0)) <= step else removed).append(line)
    if removed:
        write_text_atomic(path, "".join(line + "\n" for line in kept))
    return len(kept), removed


def read_metrics(path: str | os.PathLike, *, verify: bool = True) -> list[dict[str, Any]]:
    """All complete rows of a metrics.jsonl file, each checked against its CRC.

    A torn last line (what a kill mid-append leaves) is skipped.

    Raises:
        MetricsDamaged: a row other than the last differs from its CRC or is not JSON (unless
            ``verify=False``, which skips such rows).
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(decode_row(line))
        except ValueError as e:
            if verify and i < len(lines) - 1:
                raise MetricsDamaged(
                    f"{path}: line {i + 1} is damaged ({e}); run `trajlab runs verify`, or pass --no-verify"
                ) from None
    return rows
