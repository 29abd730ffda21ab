"""``trajlab demo``: the README's main command (train, record, probe, average, theory, report)."""

from __future__ import annotations

import argparse
from typing import Any

from trajlab.commands.io import command_line, emit, host_of


def register(sub: Any) -> None:
    """Add ``demo`` to ``trajlab``'s subparsers."""
    p = sub.add_parser(
        "demo",
        help="the end-to-end demo: train, record, average, probe, report",
        description="Train fashion-resnet20 briefly with recording and online averages, probe, report.",
    )
    p.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument("--data-dir", help="where the dataset lives (default: search the usual places)")
    p.add_argument(
        "--budget", choices=["tiny", "default"], default="default", help="tiny: seconds (for tests)"
    )
    p.add_argument("--fresh", action="store_true", help="delete earlier demo outputs in --out first")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """Handler of ``trajlab demo``."""
    from trajlab.experiments.demo import run_demo

    result = run_demo(
        args.out,
        data_dir=args.data_dir,
        budget=args.budget,
        command=command_line(args),
        fresh=args.fresh,
        host=host_of(args),
    )
    emit(result.summary_text())
    return 0
