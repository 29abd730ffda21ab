"""What every subcommand shares: the usage error, the exit codes, output, the command line, the host.

``trajlab.cli`` parses argv and the environment and hands each handler an ``argparse.Namespace`` with
``_argv`` (the arguments as typed) and ``host`` (a :class:`~trajlab.config.HostSettings` built from the
environment). Handlers read both through the helpers here, never from ``sys`` or ``os`` themselves.
"""

from __future__ import annotations

import argparse
import sys

from trajlab.config import HostSettings

EXIT_OK = 0
EXIT_FAILED = 1  # a runtime failure or damage found (e.g. `runs verify` on a damaged run)
EXIT_USAGE = 2  # bad input: nothing was written
EXIT_DISK_FULL = 3  # out of disk space (or quota): free space and run again; what was written is intact
EXIT_INTERRUPTED = 130


class UsageError(ValueError):
    """A command-line problem found by trajlab itself (not by argparse): one line, exit status 2."""


def emit(text: str) -> None:
    """Print one result line (or block) to stdout, flushed (progress bars and logs go to stderr)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def command_line(args: argparse.Namespace) -> list[str]:
    """The command as typed (``["trajlab", ...]``), for provenance records."""
    return ["trajlab", *getattr(args, "_argv", [])]


def host_of(args: argparse.Namespace) -> HostSettings:
    """The host settings the CLI read from the environment (defaults when a handler is called directly)."""
    host = getattr(args, "host", None)
    return host if isinstance(host, HostSettings) else HostSettings()


def check_at_least(values: list[tuple[str, int, int]]) -> None:
    """``UsageError`` for the first ``(flag, value, lowest)`` whose value is below its lowest allowed."""
    for name, value, low in values:
        if value < low:
            raise UsageError(f"{name} must be >= {low}, got {value}")


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--data``, ``--loss``: factories for a run recorded from a user's loop that has none."""
    g = parser.add_argument_group("runs recorded from your own loop (trajlab.record)")
    g.add_argument(
        "--model", metavar="MODULE:FUNCTION", help="model factory, when the run recorded none (or another)"
    )
    g.add_argument(
        "--data",
        metavar="MODULE:FUNCTION",
        help="data factory returning the training dataset, (train, eval) or {'train', 'eval'}",
    )
    g.add_argument("--loss", metavar="MODULE:FUNCTION", help="loss hook loss_fn(model, batch)")
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="read the run's files even when they differ from their sha256 / CRC (the result records it)",
    )


def open_run(args: argparse.Namespace, **kwargs: object) -> object:
    """The run ``args.run_dir`` as a :class:`~trajlab.runs.RecordedRun` (host settings and factory flags
    applied); problems with the run or the factories become one-line usage errors."""
    from trajlab.runs import RecordedRun, RunDirError
    from trajlab.runs.references import FactoryError

    try:
        return RecordedRun(
            args.run_dir,
            host=host_of(args),
            model=getattr(args, "model", None),
            data=getattr(args, "data", None),
            loss_fn=getattr(args, "loss", None),
            verify=not getattr(args, "no_verify", False),
            **kwargs,
        )
    except (RunDirError, FactoryError) as e:
        raise UsageError(str(e)) from None
