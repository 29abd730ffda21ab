"""Resume without losing anything: pick the newest resume point whose data verifies, and set aside, never
delete, what lies past it.

A resumed run continues from a checkpoint at step s. What the interrupted process wrote after s (snapshots,
batch-log records, manifest lines, metrics rows) would be written again identically, so it has to go;
it goes to ``RUN/quarantine/<time>-resume-at-<s>/`` (same relative paths; removed lines and record bytes
in ``*.removed`` files), and the resume says so. The checkpoint chosen is the newest one that (a) loads
and matches its sha256, and (b) lies within the intact, gap-free start of the batch log, so a damaged
batch log is repaired by truncating only past the last verified step. When no checkpoint qualifies but
one exists, the resume refuses (:class:`~trajlab.trajectory.DamageError`); with no checkpoint at all the
run starts again from step 0 (what step 0 wrote is the same, the rest is set aside).
"""

from __future__ import annotations

import datetime as _dt
import errno
import logging
import os
from pathlib import Path
from typing import Any

from trajlab import files
from trajlab.trajectory import layout
from trajlab.trajectory.batchlog import CHUNK_RE, scan_chunk
from trajlab.trajectory.checkpoint import list_checkpoints, load_checkpoint
from trajlab.trajectory.errors import DamageError, TrajectoryError

logger = logging.getLogger(__name__)

QUARANTINE_DIR = "quarantine"


class Quarantine:
    """The folder where one resume sets aside what it removes (created on first use)."""

    def __init__(self, run_dir: str | os.PathLike, step: int) -> None:
        self.run_dir = Path(run_dir)
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.dir = self.run_dir / QUARANTINE_DIR / f"{stamp}-resume-at-{step}"
        self.moved: list[str] = []

    def move(self, path: Path) -> None:
        """Move ``path`` (a file of the run) into the quarantine, keeping its relative path."""
        rel = path.relative_to(self.run_dir)
        target = self.dir / rel
        files.make_dirs(target.parent, self.run_dir)
        os.replace(path, target)
        self.moved.append(str(rel))

    def keep(self, rel: str, data: bytes) -> None:
        """Keep removed lines or record bytes of ``RUN/rel`` as ``<quarantine>/rel.removed``."""
        if not data:
            return
        target = self.dir / f"{rel}.removed"
        files.make_dirs(target.parent, self.run_dir)
        with files.open_append(target, root=self.run_dir) as fd:
            files.write_all(fd, data, target)
        self.moved.append(f"{rel} (removed part)")

    def report(self) -> None:
        if self.moved:
            logger.warning(
                "resume: set aside %d item(s) written after the resume step in %s (nothing deleted): %s",
                len(self.moved),
                self.dir,
                ", ".join(self.moved[:6]) + (", ..." if len(self.moved) > 6 else ""),
            )


def set_aside_metrics(run_dir: str | os.PathLike, step: int) -> None:
    """Move the rows of ``RUN/metrics.jsonl`` past ``step`` into the quarantine (a resume at ``step``).

    Raises:
        DamageError: a damaged row at or before ``step`` (the resume refuses rather than drop it).
    """
    from trajlab.train.metrics import MetricsDamaged, truncate_after

    try:
        _, removed = truncate_after(Path(run_dir) / "metrics.jsonl", step)
    except MetricsDamaged as e:
        raise DamageError(str(e)) from None
    if removed:
        quarantine = Quarantine(run_dir, step)
        quarantine.keep("metrics.jsonl", "".join(line + "\n" for line in removed).encode())
        quarantine.report()


def scan_batch_log(run_dir: str | os.PathLike) -> tuple[int, Path | None]:
    """``(L, where)``: the last step L such that batch-log records 1..L are all present and intact (0 when
    none), and the chunk file where the intact prefix ends (``None`` when it ends with the log itself)."""
    batch_dir = Path(run_dir) / layout.TRAJECTORY_DIR / layout.BATCH_DIR
    expected = 1
    for _, path in sorted(layout.steps_in_dir(batch_dir, CHUNK_RE).items()):
        scan = scan_chunk(path.read_bytes())
        for record in scan.records:
            if record.step != expected:
                return expected - 1, path
            expected += 1
        if scan.problem:
            return expected - 1, path
    return expected - 1, None


def intact_batch_end(run_dir: str | os.PathLike) -> int:
    """The last step L such that batch-log records 1..L are all present and intact (0 when none)."""
    return scan_batch_log(run_dir)[0]


def resume_state(run_dir: str | os.PathLike, *, needs_batch_log: bool) -> dict[str, Any] | None:
    """The state to resume from (see the module docstring); ``None`` when the run has no checkpoint.

    Raises:
        DamageError: checkpoints exist but none verifies within the intact batch log.
    """
    from trajlab.trajectory.manifest import read_manifest

    links = files.find_symlinks(run_dir)
    if links:
        raise files.UnsafePathError(
            errno.ELOOP,
            f"{links[0]}: a symlink inside the run directory; remove it before resuming (nothing changed)",
        )
    manifest = Path(run_dir) / layout.TRAJECTORY_DIR / layout.MANIFEST_FILE
    bad = [p for p in read_manifest(manifest)[1] if not p.torn]
    if bad:
        raise DamageError(
            f"{manifest}: line {bad[0].lineno} is damaged ({bad[0].message}); resuming would drop it: run "
            "`trajlab runs verify` (nothing was changed)"
        )
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        return None
    limit, where = scan_batch_log(run_dir) if needs_batch_log else (None, None)
    batch_dir = Path(run_dir) / layout.TRAJECTORY_DIR / layout.BATCH_DIR
    reasons, at = [], f" (it breaks in {where})" if where is not None else f" (in {batch_dir})"
    for step, path in reversed(checkpoints):
        if limit is not None and step > limit:
            reasons.append(f"step {step}: the batch log is intact only up to step {limit}{at}")
            continue
        try:
            state = load_checkpoint(path)
        except TrajectoryError as exc:
            reasons.append(str(exc))
            continue
        if reasons:
            logger.warning(
                "resume: using the checkpoint of step %d; newer ones not usable (%s)",
                step,
                "; ".join(reasons),
            )
        return state
    raise DamageError(
        f"{Path(run_dir) / layout.CHECKPOINT_DIR}: no checkpoint can be resumed from ({'; '.join(reasons)}); "
        "run `trajlab runs verify` (nothing was changed)"
    )
