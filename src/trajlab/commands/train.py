"""``trajlab train``: train from a preset, a config file and ``--set`` overrides into a run directory, or
continue an interrupted run with ``--resume``."""

from __future__ import annotations

import argparse
from typing import Any

from trajlab.commands.io import UsageError, command_line, emit, host_of


def register(sub: Any) -> None:
    """Add ``train`` to ``trajlab``'s subparsers."""
    p = sub.add_parser(
        "train",
        help="train a model and record its run",
        description="Train from a preset (trajlab presets), an optional config file and --set overrides.",
    )
    p.add_argument("--preset", help="preset name (default: fashion-resnet20)")
    p.add_argument("--config", help="TOML or JSON file with the same layout as a preset")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override, e.g. --set optim.lr=0.05 (repeatable)"
    )
    p.add_argument("--out", help="run directory to create (must be new or empty)")
    p.add_argument("--resume", metavar="DIR", help="continue an interrupted run from its last checkpoint")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    """Handler of ``trajlab train``."""
    from trajlab.config import resolve_config
    from trajlab.runs.runner import run_training

    host = host_of(args)
    if args.resume:
        if args.preset or args.config or args.set:
            raise UsageError(
                "--resume DIR continues the run with its own config.json; drop --preset/--config/--set"
            )
        outcome = run_training(None, args.resume, resume=True, command=command_line(args), host=host)
    else:
        if not args.out:
            raise UsageError("train needs --out DIR (or --resume DIR)")
        overrides = list(args.set or [])
        if args.quiet:
            overrides.append("train.progress=false")
        preset = args.preset or (None if args.config else "fashion-resnet20")
        cfg = resolve_config(preset, args.config, overrides)
        outcome = run_training(cfg, args.out, command=command_line(args), host=host)
    final = outcome.result.final_metrics
    acc = final.get("test_acc")
    msg = f"run complete: {outcome.run_dir} ({outcome.result.steps_done} steps"
    if acc is not None:
        msg += f", test acc {acc:.4f}, test loss {final.get('test_loss', float('nan')):.4f}"
    emit(msg + ")")
    return 0
