"""``trajlab demo``: the README's main command (train to the plateau, lr ladder, averages, theory, report)."""

from __future__ import annotations

import argparse
from typing import Any

from trajlab.commands.io import command_line, emit, host_of

# default/tiny: the plateau demo (trajlab.experiments.plateau_demo); resnet/resnet-tiny: the earlier
# ResNet-20 demo (trajlab.experiments.demo), which never reaches the plateau.
BUDGETS = ("default", "tiny", "resnet", "resnet-tiny")


def register(sub: Any) -> None:
    """Add ``demo`` to ``trajlab``'s subparsers."""
    p = sub.add_parser(
        "demo",
        help="the end-to-end demo: train to the plateau, lr ladder, averages, probes, theory, report",
        description="Train an MLP on Fashion-MNIST until its constant-lr loss plateaus, branch an lr ladder, "
        "compare EMAs and two-point averages with it and with the theory's predictions, and write a report.",
    )
    p.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument("--data-dir", help="where the dataset lives (default: search the usual places)")
    p.add_argument(
        "--budget",
        choices=BUDGETS,
        default="default",
        help="default: the plateau demo (minutes); tiny: the same in seconds on synthetic data (tests); "
        "resnet: the earlier ResNet-20 demo (no plateau); resnet-tiny: its test size",
    )
    p.add_argument("--fresh", action="store_true", help="delete earlier demo outputs in --out first")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """Handler of ``trajlab demo``."""
    if args.budget.startswith("resnet"):
        from trajlab.experiments.demo import run_demo

        result: Any = run_demo(
            args.out,
            data_dir=args.data_dir,
            budget="tiny" if args.budget == "resnet-tiny" else "default",
            command=command_line(args),
            fresh=args.fresh,
            host=host_of(args),
        )
    else:
        from trajlab.experiments.plateau_demo import run_plateau_demo

        result = run_plateau_demo(
            args.out,
            data_dir=args.data_dir,
            budget=args.budget,
            fresh=args.fresh,
            host=host_of(args),
            progress=args.budget != "tiny",
        )
    emit(result.summary_text())
    return 0
