"""The ``trajlab`` command line: the only place that reads argv.

Every subcommand has ``--help``. Bad input ends with one line ``trajlab: error: ...`` on stderr and exit
status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

EXIT_USAGE = 2
EXIT_FAILED = 1

log = logging.getLogger("trajlab")


class UsageError(ValueError):
    """A command-line problem found by trajlab itself (not by argparse)."""


def _user_errors() -> tuple[type[BaseException], ...]:
    """Error classes whose message is meant for the user (one line, exit 2)."""
    from trajlab.config import ConfigError
    from trajlab.data import DataError
    from trajlab.experiments.runner import RunDirError
    from trajlab.models import ModelError

    errors: list[type[BaseException]] = [UsageError, ConfigError, DataError, ModelError, RunDirError]
    for module, name in (
        ("trajlab.trajectory", "TrajectoryError"),
        ("trajlab.averaging", "NotRepresentableError"),
    ):
        with contextlib.suppress(ImportError, AttributeError):
            errors.append(getattr(importlib.import_module(module), name))
    return tuple(errors)


# ------------------------------------------------------------------------------------------ commands


def cmd_train(args: argparse.Namespace) -> int:
    from trajlab.config import resolve_config
    from trajlab.experiments.runner import run_training

    if args.resume:
        if args.preset or args.config or args.set:
            raise UsageError(
                "--resume DIR continues the run with its own config.json; drop --preset/--config/--set"
            )
        outcome = run_training(None, args.resume, resume=True, command=_argv(args))
    else:
        if not args.out:
            raise UsageError("train needs --out DIR (or --resume DIR)")
        overrides = list(args.set or [])
        if args.quiet:
            overrides.append("train.progress=false")
        preset = args.preset or (None if args.config else "fashion-resnet20")
        cfg = resolve_config(preset, args.config, overrides)
        outcome = run_training(cfg, args.out, command=_argv(args))
    final = outcome.result.final_metrics
    acc = final.get("test_acc")
    msg = f"run complete: {outcome.run_dir} ({outcome.result.steps_done} steps"
    if acc is not None:
        msg += f", test acc {acc:.4f}, test loss {final.get('test_loss', float('nan')):.4f}"
    _out(msg + ")")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from trajlab.config import preset_description, preset_names, preset_text

    if args.name:
        _out(preset_text(args.name).rstrip())
        return 0
    names = preset_names()
    width = max(len(n) for n in names)
    for name in names:
        _out(f"{name:<{width}}  {preset_description(name)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from trajlab.experiments.demo import run_demo

    result = run_demo(
        args.out, data_dir=args.data_dir, budget=args.budget, command=_argv(args), fresh=args.fresh
    )
    _out(result.summary_text())
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from trajlab.trajectory import format_summary, summarize_run, verify_run

    if args.runs_command == "table":
        from trajlab.experiments.tables import format_seed_table, seed_table

        try:
            table = seed_table(args.run_dirs, metric=args.metric, steps=args.steps)
        except ValueError as e:
            raise UsageError(str(e)) from None
        _out(json.dumps(table, indent=2) if args.json else format_seed_table(table))
        return 0
    if args.runs_command == "show":
        summary = summarize_run(args.run_dir)
        _out(json.dumps(summary, indent=2) if args.json else format_summary(summary))
        return 0
    report = verify_run(args.run_dir)
    for line in report.lines():
        _out(line)
    return 0 if report.ok else EXIT_FAILED


# ------------------------------------------------------------------------------------------ parser


def _add_train(sub: Any) -> None:
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


class _VersionAction(argparse.Action):
    """``--version``: the version, the code's git revision and source digest (as result files record them),
    computed only when asked (it imports torch)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        import torch

        import trajlab
        from trajlab.provenance import git_revision, source_digest

        git = git_revision()
        rev = "no git checkout"
        if git["revision"]:
            rev = f"git {git['revision']}{' (dirty)' if git['dirty'] else ''}"
        digest = source_digest()
        _out(f"trajlab {trajlab.__version__} ({rev}; source sha256 {digest}; torch {torch.__version__})")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trajlab",
        description="Training trajectories, fixed mini-batch losses, iterate averaging and the noisy "
        "quadratic model (arXiv 2301.02312).",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument(
        "--version", action=_VersionAction, help="print the version, git revision and source digest; exit"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_train(sub)

    p = sub.add_parser("presets", help="list presets, or print one", description="List presets or print one.")
    p.add_argument("name", nargs="?", help="print this preset's TOML")
    p.set_defaults(func=cmd_presets)

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

    p = sub.add_parser(
        "runs", help="inspect run directories", description="Inspect or verify a run directory."
    )
    runs_sub = p.add_subparsers(dest="runs_command", metavar="ACTION")
    runs_sub.required = True
    q = runs_sub.add_parser("show", help="summary: steps covered, sizes, metrics head/tail")
    q.add_argument("run_dir")
    q.add_argument("--json", action="store_true")
    q = runs_sub.add_parser("verify", help="check every file against its sha256; exit 1 on any damage")
    q.add_argument("run_dir")
    q = runs_sub.add_parser(
        "table", help="mean ± std over runs (e.g. seeds) of every evaluated model's test metric per eval step"
    )
    q.add_argument("run_dirs", nargs="+")
    q.add_argument("--metric", default="test_acc", choices=["test_acc", "test_loss"])
    q.add_argument("--steps", type=int, nargs="+", help="only these evaluation steps")
    q.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs)

    for register in _extra_registrars():
        register(sub)
    return parser


def _extra_registrars() -> list[Callable[[Any], None]]:
    """Subcommands defined next to their features (they build parsers; only this module reads argv)."""
    from trajlab.experiments import commands

    return commands.REGISTRARS


# ------------------------------------------------------------------------------------------ main


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _argv(args: argparse.Namespace) -> list[str]:
    return ["trajlab", *getattr(args, "_argv", [])]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args._argv = argv
    logging.basicConfig(
        level=getattr(logging, args.log_level), format="[trajlab] %(message)s", stream=sys.stderr
    )
    from trajlab.train.engine import TrainingDiverged

    user_errors = _user_errors()
    try:
        return int(args.func(args) or 0)
    except user_errors as e:
        sys.stderr.write(f"trajlab: error: {e}\n")
        return EXIT_USAGE
    except TrainingDiverged as e:
        sys.stderr.write(f"trajlab: {e}\n")
        return EXIT_FAILED
    except KeyboardInterrupt:
        sys.stderr.write("trajlab: interrupted\n")
        return 130


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
