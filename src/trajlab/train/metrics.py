"""metrics.jsonl: one JSON object per line, appended and flushed as training goes.

Rows carry ``kind`` (``train`` or ``eval``) and ``step``. On resume from step s, rows with
``step > s`` written by the interrupted process are dropped first, so the file ends up identical
(but for the wall-time fields) to that of an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

TIME_FIELDS = ("wall_s", "images_per_s")


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
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
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
        self._fh.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")
        self._fh.flush()
        if self._tb is not None:
            for key, value in row.items():
                if key not in ("kind", "step") and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{row.get('kind', 'metrics')}/{key}", value, row["step"])

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()


def truncate_after(path: str | os.PathLike, step: int) -> int:
    """Drop rows with ``step > step`` (and a torn last line) from ``path``, atomically. Returns rows kept."""
    path = Path(path)
    if not path.exists():
        return 0
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a kill
        if int(row.get("step", 0)) <= step:
            kept.append(line)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)
    return len(kept)


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete rows of a metrics.jsonl file."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
