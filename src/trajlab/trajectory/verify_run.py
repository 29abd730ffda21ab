"""``verify_run``: check everything a run directory holds (what ``trajlab runs verify`` prints).

* the trajectory: every snapshot against its manifest line (size, sha256), the manifest, the batch log's
  records (CRC each) and that it covers every trained step without gaps (:func:`verify_store`);
* every checkpoint against its ``.sha256`` line (a missing line is damage too);
* every file listed in ``checksums.json`` (config or recipe, provenance, summary, result files);
* every row of ``metrics.jsonl`` against its CRC (a torn last line is a warning: what a kill leaves);
* whether the run finished (``summary.json``): an unfinished run is never "OK";
* files trajlab did not write: notes, not errors.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from trajlab import files
from trajlab.trajectory import layout
from trajlab.trajectory.checkpoint import list_checkpoints
from trajlab.trajectory.errors import TrajectoryError
from trajlab.trajectory.store import TrajectoryStore
from trajlab.trajectory.verify import VerifyReport, verify_store

# What a run directory may hold besides its checksummed files (anything else is a note).
KNOWN_ENTRIES = {
    "config.json",
    "recipe.json",
    "provenance.json",
    "summary.json",
    "branch.json",
    "metrics.jsonl",
    files.CHECKSUMS_FILE,
    layout.TRAJECTORY_DIR,
    layout.CHECKPOINT_DIR,
    "probes",
    "analysis",
    "tensorboard",
    "quarantine",
    "report.html",
    "lightning_logs",
    "hf_checkpoints",
}


def verify_run(run_dir: str | Path, check_hashes: bool = True) -> VerifyReport:
    """Check every file of a run directory; never raises for damage, it reports it (see module doc)."""
    run_dir = Path(run_dir)
    report = VerifyReport(str(run_dir), finished=(run_dir / "summary.json").is_file())
    if not run_dir.is_dir():
        report.add("error", "missing", str(run_dir), None, "no such run directory")
        return report
    if (run_dir / layout.TRAJECTORY_DIR).is_dir():
        _verify_trajectory(run_dir, report, check_hashes)
    else:
        report.add("note", "no-trajectory", layout.TRAJECTORY_DIR, None, "the run recorded no trajectory")
    _verify_checkpoints(run_dir, report)
    _verify_checksums(run_dir, report)
    _verify_metrics(run_dir, report)
    _verify_coverage(run_dir, report)
    _note_unknown(run_dir, report)
    return report


def _verify_trajectory(run_dir: Path, report: VerifyReport, check_hashes: bool) -> None:
    try:
        store = TrajectoryStore(run_dir, verify=False)  # report each problem instead of stopping at one
    except TrajectoryError as exc:
        report.add("error", "format", f"{layout.TRAJECTORY_DIR}/{layout.FORMAT_FILE}", None, str(exc))
        return
    found = verify_store(store, check_hashes=check_hashes)
    report.problems.extend(found.problems)
    report.snapshots_checked += found.snapshots_checked
    report.batch_steps_checked += found.batch_steps_checked


def _verify_checkpoints(run_dir: Path, report: VerifyReport) -> None:
    listed = list_checkpoints(run_dir)
    have = {p.with_suffix(".sha256").name for _, p in listed}
    ckpt_dir = run_dir / layout.CHECKPOINT_DIR
    oldest = listed[0][0] if listed else None
    for sha in sorted(ckpt_dir.glob("ckpt_*.sha256")) if ckpt_dir.is_dir() else []:
        if sha.name not in have:
            rel = f"{layout.CHECKPOINT_DIR}/{sha.with_suffix('.pt').name}"
            step = int(sha.stem.split("_")[1])
            if oldest is not None and step < oldest:
                # Pruning deletes the .pt, then its .sha256: a kill in between leaves this line behind.
                report.add("note", "pruned", rel, step, f"pruned checkpoint (its {sha.name} was left behind)")
            else:
                report.add("error", "missing", rel, None, f"checkpoint missing (its {sha.name} is there)")
    newest = listed[-1][0] if listed else None
    for step, path in listed:
        rel = f"{layout.CHECKPOINT_DIR}/{path.name}"
        report.checkpoints_checked += 1
        sha = path.with_suffix(".sha256")
        try:
            expected = sha.read_text().split(" ", 1)[0].strip()
        except (OSError, UnicodeDecodeError):
            if step == newest and not report.finished:
                # Written as the .pt, then its .sha256 line: a run killed in between. Resume skips it.
                report.add(
                    "warning",
                    "torn",
                    rel,
                    step,
                    "no sha256 line: the run stopped while writing it; resume uses the previous checkpoint",
                )
            else:
                report.add(
                    "error", "missing", f"{layout.CHECKPOINT_DIR}/{sha.name}", step, "sha256 line missing"
                )
            continue
        if _sha256_file(path) != expected:
            report.add("error", "corrupt", rel, step, "sha256 differs from its .sha256 line (file altered)")


def _verify_checksums(run_dir: Path, report: VerifyReport) -> None:
    try:
        listed = files.read_checksums(run_dir)
    except files.ChecksumError as exc:
        report.add("error", "corrupt", files.CHECKSUMS_FILE, None, str(exc))
        return
    for rel, sha in sorted(listed.items()):
        path = run_dir / rel
        report.files_checked += 1
        if not path.is_file():
            report.add("error", "missing", rel, None, f"listed in {files.CHECKSUMS_FILE} but missing")
        elif _sha256_file(path) != sha:
            report.add(
                "error", "corrupt", rel, None, f"sha256 differs from {files.CHECKSUMS_FILE} (file altered)"
            )
    for name in ("config.json", "recipe.json", "provenance.json", "summary.json"):
        if (run_dir / name).is_file() and name not in listed:
            report.add(
                "note",
                "unlisted",
                name,
                None,
                f"no checksum recorded (written before {files.CHECKSUMS_FILE})",
            )
    if not (run_dir / "config.json").is_file() and not (run_dir / "recipe.json").is_file():
        report.add(
            "warning",
            "no-config",
            "config.json",
            None,
            "neither config.json nor recipe.json: commands cannot rebuild the run",
        )


def _verify_metrics(run_dir: Path, report: VerifyReport) -> None:
    from trajlab.train.metrics import decode_row

    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return
    lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    for i, line in enumerate(lines):
        try:
            decode_row(line)
        except ValueError as exc:
            last = i == len(lines) - 1
            severity, kind = ("warning", "metrics-torn") if last else ("error", "metrics-corrupt")
            report.add(severity, kind, "metrics.jsonl", None, f"line {i + 1}: {exc}")
    report.metrics_rows_checked = len(lines)


def trained_steps(run_dir: Path) -> int:
    """Steps the run is known to have trained: its summary's, else its newest checkpoint's."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        return int(summary.get("steps", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        checkpoints = list_checkpoints(run_dir)
        return checkpoints[-1][0] if checkpoints else 0


def _verify_coverage(run_dir: Path, report: VerifyReport) -> None:
    """The batch log must hold every trained step (a finished run: all; else up to its last checkpoint)."""
    batch_dir = run_dir / layout.TRAJECTORY_DIR / layout.BATCH_DIR
    if not (run_dir / layout.TRAJECTORY_DIR).is_dir():
        return
    from trajlab.trajectory.quarantine import intact_batch_end

    trained, end = trained_steps(run_dir), intact_batch_end(run_dir)
    ours = (run_dir / "config.json").is_file() or (run_dir / "recipe.json").is_file()
    if not ours and (not batch_dir.is_dir() or not any(batch_dir.iterdir())):
        return  # a bare trajectory without a batch log (a Recorder with log_batches=False)
    if end < trained:
        report.add(
            "error",
            "batch-short",
            f"{layout.TRAJECTORY_DIR}/{layout.BATCH_DIR}",
            end + 1,
            f"the batch log holds steps 1..{end} intact, the run trained {trained} steps",
        )


def _note_unknown(run_dir: Path, report: VerifyReport) -> None:
    for entry in sorted(run_dir.iterdir()):
        if entry.name not in KNOWN_ENTRIES and not (
            entry.name.startswith(".") and entry.name.endswith(".tmp")
        ):
            report.add("note", "unknown", entry.name, None, "not written by trajlab (left alone)")
        elif entry.is_symlink():
            report.add("error", "symlink", entry.name, None, "a symlink inside the run directory; remove it")


def report_dict(report: VerifyReport) -> dict[str, Any]:
    """The report as JSON (``trajlab runs verify --json``)."""
    verdict = "damaged" if not report.ok else "ok" if report.clean else "unfinished"
    return {
        "run_dir": report.run_dir,
        "verdict": verdict,
        "finished": report.finished,
        "checked": {
            "snapshots": report.snapshots_checked,
            "batch_log_steps": report.batch_steps_checked,
            "checkpoints": report.checkpoints_checked,
            "files": report.files_checked,
            "metrics_rows": report.metrics_rows_checked,
        },
        "problems": [p.__dict__ for p in report.problems],
    }


def _sha256_file(path: Path, block_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(block_bytes):
            digest.update(block)
    return digest.hexdigest()
