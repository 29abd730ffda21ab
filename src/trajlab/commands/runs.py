"""``trajlab runs show|verify|table``: inspect run directories."""

from __future__ import annotations

import argparse
import json
from typing import Any

from trajlab.commands.io import EXIT_FAILED, UsageError, emit


def register(sub: Any) -> None:
    """Add ``runs`` and its actions to ``trajlab``'s subparsers."""
    p = sub.add_parser(
        "runs", help="inspect run directories", description="Inspect or verify a run directory."
    )
    runs_sub = p.add_subparsers(dest="runs_command", metavar="ACTION")
    runs_sub.required = True
    q = runs_sub.add_parser("show", help="summary: steps covered, sizes, metrics head/tail")
    q.add_argument("run_dir")
    q.add_argument("--json", action="store_true")
    q = runs_sub.add_parser(
        "verify",
        help="check every file against its sha256; exit 0 for a finished, undamaged run, 1 for damage or an "
        "unfinished run",
    )
    q.add_argument("run_dir")
    q.add_argument("--json", action="store_true", help="the report as JSON (for scripts)")
    q = runs_sub.add_parser(
        "table", help="mean ± std over runs (e.g. seeds) of every evaluated model's test metric per eval step"
    )
    q.add_argument("run_dirs", nargs="+")
    q.add_argument("--metric", default="test_acc", choices=["test_acc", "test_loss"])
    q.add_argument("--steps", type=int, nargs="+", help="only these evaluation steps")
    q.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs)


def cmd_runs(args: argparse.Namespace) -> int:
    """Handler of ``trajlab runs``."""
    from trajlab.trajectory import format_summary, summarize_run, verify_run

    if args.runs_command == "table":
        from trajlab.reports.seed_table import format_seed_table, seed_table

        try:
            table = seed_table(args.run_dirs, metric=args.metric, steps=args.steps)
        except ValueError as e:
            raise UsageError(str(e)) from None
        emit(json.dumps(table, indent=2) if args.json else format_seed_table(table))
        return 0
    from pathlib import Path

    if not Path(args.run_dir).is_dir():
        raise UsageError(f"{args.run_dir}: no such run directory")
    if args.runs_command == "show":
        summary = summarize_run(args.run_dir)
        emit(json.dumps(summary, indent=2) if args.json else format_summary(summary))
        return 0
    report = verify_run(args.run_dir)
    if args.json:
        from trajlab.trajectory import report_dict

        emit(json.dumps(report_dict(report), indent=2))
    else:
        for line in report.lines():
            emit(line)
    return 0 if report.clean else EXIT_FAILED
