"""``verify_store``: check a run's trajectory files; ``VerifyReport``: what it and ``verify_run()`` found."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from trajlab.trajectory import layout
from trajlab.trajectory.manifest import ManifestProblem

if TYPE_CHECKING:
    from trajlab.trajectory.store import TrajectoryStore


@dataclass(frozen=True)
class Problem:
    """One finding.

    Attributes:
        severity: ``"error"`` (damage: missing/corrupt data) or ``"warning"`` (harmless leftovers of a
            killed run).
        kind: short tag, e.g. ``"missing"``, ``"corrupt"``, ``"size"``, ``"manifest"``, ``"batch-gap"``.
        file: the file concerned.
        step: the step concerned, when there is one.
        message: one line saying what is wrong.
    """

    severity: str
    kind: str
    file: str
    step: int | None
    message: str

    def line(self) -> str:
        """``ERROR [corrupt] step 40 snapshots/step_000000040.safetensors: sha256 mismatch ...``."""
        where = f"step {self.step} " if self.step is not None else ""
        return f"{self.severity.upper()} [{self.kind}] {where}{self.file}: {self.message}"


@dataclass
class VerifyReport:
    """Result of checking a run directory's trajectory.

    Attributes:
        run_dir: the run directory checked.
        problems: every finding, errors and warnings.
        snapshots_checked: snapshot files hashed.
        batch_steps_checked: batch-log records checked.
    """

    run_dir: str
    problems: list[Problem] = field(default_factory=list)
    snapshots_checked: int = 0
    batch_steps_checked: int = 0
    finished: bool | None = None
    checkpoints_checked: int = 0
    files_checked: int = 0
    metrics_rows_checked: int = 0

    @property
    def errors(self) -> list[Problem]:
        """Findings of damage."""
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        """Harmless findings (e.g. a temporary file left by a killed writer)."""
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def notes(self) -> list[Problem]:
        """Facts worth knowing that are no fault (files trajlab did not write, no trajectory recorded)."""
        return [p for p in self.problems if p.severity == "note"]

    @property
    def ok(self) -> bool:
        """No errors (warnings allowed); the run may still be unfinished (see :attr:`clean`)."""
        return not self.errors

    @property
    def clean(self) -> bool:
        """No errors and the run finished (``summary.json``): what ``trajlab runs verify`` calls OK."""
        return self.ok and self.finished is not False

    def add(self, severity: str, kind: str, file: str, step: int | None, message: str) -> None:
        """Record a finding."""
        self.problems.append(Problem(severity, kind, file, step, message))

    def lines(self) -> list[str]:
        """Human-readable lines: a verdict, then one line per finding (errors first)."""
        verdict = "DAMAGED" if not self.ok else "OK" if self.clean else "UNFINISHED"
        head = (
            f"{verdict}: {self.run_dir}: {self.snapshots_checked} snapshots, {self.batch_steps_checked} "
            f"batch-log steps, {self.checkpoints_checked} checkpoints, {self.files_checked} files and "
            f"{self.metrics_rows_checked} metrics rows checked; {len(self.errors)} errors, "
            f"{len(self.warnings)} warnings, {len(self.notes)} notes"
        )
        if self.finished is False:
            head += "; the run did not finish (no summary.json): resume it, or it is still running"
        return [head] + [p.line() for p in self.errors + self.warnings + self.notes]


def verify_store(store: TrajectoryStore, check_hashes: bool = True) -> VerifyReport:
    """Check a store's snapshots against the manifest and its batch log (see ``TrajectoryStore.verify``)."""
    report = VerifyReport(str(store.run_dir))
    _verify_manifest(store, report)
    _verify_snapshots(store, report, check_hashes)
    _verify_batch_log(store, report)
    return report


def _verify_manifest(store: TrajectoryStore, report: VerifyReport) -> None:
    name = f"{layout.TRAJECTORY_DIR}/{layout.MANIFEST_FILE}"
    for problem in store.manifest_problems:
        _report_manifest_problem(report, name, problem)
    for entry in store.duplicate_entries:
        report.add(
            "error", "manifest", name, entry.step, f"step {entry.step} listed twice (line {entry.lineno})"
        )
    steps_in_file_order = [e.step for e in sorted(store.manifest, key=lambda e: e.lineno)]
    if steps_in_file_order != sorted(steps_in_file_order):
        report.add("error", "manifest", name, None, "lines are not in step order")


def _verify_snapshots(store: TrajectoryStore, report: VerifyReport, check_hashes: bool) -> None:
    for entry in store.manifest:
        path = store.traj_dir / entry.file
        rel = f"{layout.TRAJECTORY_DIR}/{entry.file}"
        report.snapshots_checked += 1
        if not path.is_file():
            report.add("error", "missing", rel, entry.step, f"file missing (manifest line {entry.lineno})")
            continue
        size = path.stat().st_size
        if size != entry.bytes:
            report.add("error", "size", rel, entry.step, f"{size} bytes, the manifest says {entry.bytes}")
            continue
        if check_hashes and _sha256_file(path) != entry.sha256:
            report.add("error", "corrupt", rel, entry.step, "sha256 differs from the manifest (file altered)")
    listed = set(store.steps())
    on_disk = layout.steps_in_dir(store.traj_dir / layout.SNAPSHOT_DIR, layout.SNAPSHOT_RE)
    for step, path in sorted(on_disk.items()):
        if step not in listed:
            report.add(
                "warning",
                "unlisted",
                f"{layout.TRAJECTORY_DIR}/{layout.SNAPSHOT_DIR}/{path.name}",
                step,
                "snapshot not in the manifest (a killed run; ignored, and listed again on resume)",
            )
    snapshot_dir = store.traj_dir / layout.SNAPSHOT_DIR
    for path in sorted(snapshot_dir.glob(f".*{layout.TMP_SUFFIX}")) if snapshot_dir.is_dir() else []:
        report.add(
            "warning",
            "temp",
            f"{layout.TRAJECTORY_DIR}/{layout.SNAPSHOT_DIR}/{path.name}",
            None,
            "temporary file of an interrupted write (ignored)",
        )


def _verify_batch_log(store: TrajectoryStore, report: VerifyReport) -> None:
    scans = store.batch_log_scans()
    seen: list[int] = []
    for position, (path, scan) in enumerate(scans):
        rel = f"{layout.TRAJECTORY_DIR}/{layout.BATCH_DIR}/{path.name}"
        steps = [r.step for r in scan.records]
        report.batch_steps_checked += len(steps)
        if scan.problem:
            is_last = position == len(scans) - 1
            severity = "warning" if scan.torn_tail and is_last else "error"
            kind = "batch-torn" if scan.torn_tail else "batch-corrupt"
            after = steps[-1] if steps else None
            report.add(severity, kind, rel, after, f"{scan.problem} (records after step {after} unreadable)")
        seen.extend(steps)
    if not seen:
        if store.steps() and max(store.steps()) > 0:
            report.add(
                "warning",
                "batch-missing",
                f"{layout.TRAJECTORY_DIR}/{layout.BATCH_DIR}",
                None,
                "no batch log (batch(step) will not work for this run)",
            )
        return
    _check_contiguous(report, seen)
    last_snapshot = max(store.steps(), default=0)
    if last_snapshot > seen[-1]:
        report.add(
            "warning",
            "batch-short",
            f"{layout.TRAJECTORY_DIR}/{layout.BATCH_DIR}",
            last_snapshot,
            f"batch log ends at step {seen[-1]}, before the last snapshot",
        )


def _check_contiguous(report: VerifyReport, seen: list[int]) -> None:
    where = f"{layout.TRAJECTORY_DIR}/{layout.BATCH_DIR}"
    expected = 1
    for step in seen:
        if step < expected:
            report.add("error", "batch-duplicate", where, step, f"step {step} logged twice or out of order")
            continue
        if step > expected:
            gap = f"{expected}" if step - 1 == expected else f"{expected}..{step - 1}"
            report.add("error", "batch-gap", where, expected, f"no record for step(s) {gap}")
        expected = step + 1


def _report_manifest_problem(report: VerifyReport, name: str, problem: ManifestProblem) -> None:
    if problem.torn:
        report.add(
            "warning",
            "manifest-torn",
            name,
            None,
            f"{problem.message} (line {problem.lineno}, an interrupted append)",
        )
    else:
        report.add("error", "manifest", name, None, problem.message)


def _sha256_file(path: Path, block_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(block_bytes):
            digest.update(block)
    return digest.hexdigest()
