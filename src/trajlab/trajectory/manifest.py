"""Reading and rewriting ``manifest.jsonl``: one JSON line per complete snapshot."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from trajlab.trajectory import layout

_FIELDS = {
    "step": int,
    "epoch": (int, float, type(None)),
    "lr": (int, float, type(None)),
    "file": str,
    "sha256": str,
}


@dataclass(frozen=True)
class SnapshotEntry:
    """One manifest line.

    Attributes:
        step: the step whose weights the snapshot holds (``theta_step``).
        epoch: float epoch position at that step.
        lr: learning rate used for that step.
        file: path relative to ``RUN/trajectory`` (``snapshots/step_000000100.safetensors``).
        sha256: hex digest of the whole file.
        bytes: file size.
        dtype: floating-point storage dtype (``"float32"`` or ``"bfloat16"``).
        lineno: 1-based line number in the manifest.
        line: the line's exact text (without the newline).
    """

    step: int
    epoch: float
    lr: float
    file: str
    sha256: str
    bytes: int
    dtype: str
    lineno: int = 0
    line: str = ""


@dataclass(frozen=True)
class ManifestProblem:
    """A manifest line that could not be read. ``torn``: an incomplete last line (killed/power-cut writer)."""

    lineno: int
    message: str
    torn: bool = False


def read_manifest(path: Path) -> tuple[list[SnapshotEntry], list[ManifestProblem]]:
    """Parse the manifest; a missing file is an empty manifest.

    Returns:
        ``(entries in file order, problems)``; malformed lines are skipped and reported.
    """
    if not path.exists():
        return [], []
    text = path.read_bytes().decode("utf-8", errors="replace")
    entries: list[SnapshotEntry] = []
    problems: list[ManifestProblem] = []
    lines = text.split("\n")
    complete = text.endswith("\n") or text == ""
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        is_last_partial = lineno == len(lines) and not complete
        try:
            entries.append(_parse_line(line, lineno))
        except ValueError as exc:
            problems.append(ManifestProblem(lineno, str(exc), torn=is_last_partial))
            continue
        if is_last_partial:
            # A parsable line without its newline is complete JSON; accept it but note the missing newline.
            problems.append(ManifestProblem(lineno, "last line has no newline", torn=True))
    return entries, problems


def _parse_line(line: str, lineno: int) -> SnapshotEntry:
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"line {lineno} is not JSON ({exc.msg})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"line {lineno} is not a JSON object")
    for key, kind in _FIELDS.items():
        if not isinstance(raw.get(key), kind) or isinstance(raw.get(key), bool):
            raise ValueError(f"line {lineno}: field {key!r} missing or of the wrong type")
    size = raw.get("bytes")
    if not isinstance(size, int) or size < 0:
        raise ValueError(f"line {lineno}: field 'bytes' missing or not a non-negative integer")
    file = raw["file"]
    if layout.SNAPSHOT_RE.match(Path(file).name) is None or file != layout.snapshot_relpath(raw["step"]):
        raise ValueError(
            f"line {lineno}: file {file!r} is not {layout.snapshot_relpath(raw['step'])!r}, "
            f"the file of step {raw['step']}"
        )
    return SnapshotEntry(
        step=raw["step"],
        epoch=_float(raw["epoch"]),
        lr=_float(raw["lr"]),
        file=file,
        sha256=raw["sha256"],
        bytes=size,
        dtype=str(raw.get("dtype", "float32")),
        lineno=lineno,
        line=line,
    )


def _float(value: float | None) -> float:
    return math.nan if value is None else float(value)


def rewrite_manifest(path: Path, lines: list[str]) -> None:
    """Atomically replace the manifest with ``lines`` (used when a resumed run truncates it)."""
    text = "".join(line.rstrip("\n") + "\n" for line in lines)
    layout.write_file_atomic(path, text.encode())
