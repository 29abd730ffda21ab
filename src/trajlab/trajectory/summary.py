"""What ``trajlab runs show DIR`` and ``trajlab runs verify DIR`` print: ``summarize_run``, ``verify_run``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trajlab.trajectory.checkpoint import list_checkpoints
from trajlab.trajectory.errors import TrajectoryError
from trajlab.trajectory.store import TrajectoryStore
from trajlab.trajectory.verify_run import verify_run  # noqa: F401 (its home before; kept importable)

_HEAD_TAIL_ROWS = 3


def summarize_run(run_dir: str | Path) -> dict[str, Any]:
    """A JSON-serialisable summary of a run directory: snapshots, batch log, checkpoints, metrics.

    Returns:
        ``{"run_dir", "trajectory": {...} or None (with "error" when unreadable), "checkpoints": {...},
        "metrics": {"rows", "head", "tail"}}``; snapshot steps are described as arithmetic runs.
    """
    run_dir = Path(run_dir)
    summary: dict[str, Any] = {"run_dir": str(run_dir), "trajectory": None}
    try:
        store = TrajectoryStore(run_dir, verify=False)  # a summary shows what is there, damaged or not
    except TrajectoryError as exc:
        summary["trajectory_error"] = str(exc)
    else:
        entries = store.manifest
        sizes = [e.bytes for e in entries]
        batch_steps = store.batch_steps()
        summary["trajectory"] = {
            "snapshots": len(entries),
            "steps": describe_steps([e.step for e in entries]),
            "first_step": entries[0].step if entries else None,
            "last_step": entries[-1].step if entries else None,
            "total_bytes": sum(sizes),
            "bytes_per_snapshot": {"min": min(sizes), "max": max(sizes)} if sizes else None,
            "dtypes": sorted({e.dtype for e in entries}),
            "batch_log_steps": len(batch_steps),
            "batch_log_range": [batch_steps[0], batch_steps[-1]] if batch_steps else None,
            "batch_log_bytes": sum(p.stat().st_size for p in store.batch_log_files()),
        }
    checkpoints = list_checkpoints(run_dir)
    summary["checkpoints"] = {
        "steps": [s for s, _ in checkpoints],
        "total_bytes": sum(p.stat().st_size for _, p in checkpoints),
    }
    summary["metrics"] = _metrics_head_tail(run_dir / "metrics.jsonl")
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """Render :func:`summarize_run`'s dict as a few human-readable lines."""
    lines = [f"run: {summary['run_dir']}"]
    traj = summary.get("trajectory")
    if traj is None:
        lines.append(f"trajectory: none ({summary.get('trajectory_error', 'not recorded')})")
    else:
        per = traj["bytes_per_snapshot"]
        size = f", {_mb(per['min'])}..{_mb(per['max'])} each" if per else ""
        lines.append(
            f"snapshots: {traj['snapshots']} ({', '.join(traj['dtypes']) or '-'}), "
            f"{_mb(traj['total_bytes'])} total{size}"
        )
        lines.append(f"  steps: {traj['steps'] or '-'}")
        rng = traj["batch_log_range"]
        covered = f"steps {rng[0]}..{rng[1]}" if rng else "empty"
        lines.append(
            f"batch log: {traj['batch_log_steps']} steps ({covered}), {_mb(traj['batch_log_bytes'])}"
        )
    ckpt = summary["checkpoints"]
    lines.append(f"checkpoints: {ckpt['steps'] or 'none'} ({_mb(ckpt['total_bytes'])})")
    metrics = summary["metrics"]
    lines.append(f"metrics: {metrics['rows']} rows")
    for label in ("head", "tail"):
        for row in metrics[label]:
            shown = ", ".join(
                f"{k}={_short(v)}" for k, v in row.items() if k not in ("wall_s", "images_per_s")
            )
            lines.append(f"  {label}: {shown}")
    return "\n".join(lines)


def describe_steps(steps: list[int]) -> str:
    """Compress sorted steps into arithmetic runs: ``"0..100 every 10 (11), 101..300 every 1 (200)"``."""
    parts: list[str] = []
    i = 0
    while i < len(steps):
        j = i + 1
        if j < len(steps):
            stride = steps[j] - steps[i]
            while j + 1 < len(steps) and steps[j + 1] - steps[j] == stride:
                j += 1
        if j - i >= 2:
            parts.append(f"{steps[i]}..{steps[j]} every {steps[j] - steps[j - 1]} ({j - i + 1})")
            i = j + 1
        else:
            parts.append(str(steps[i]))
            i += 1
    return ", ".join(parts)


def _metrics_head_tail(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {"rows": 0, "head": [], "tail": []}
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a kill
        if isinstance(row, dict):
            rows.append(row)
    head = rows[:_HEAD_TAIL_ROWS]
    tail = rows[max(_HEAD_TAIL_ROWS, len(rows) - _HEAD_TAIL_ROWS) :]
    return {"rows": len(rows), "head": head, "tail": tail}


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.2f} MB" if n_bytes >= 10_000 else f"{n_bytes} B"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
