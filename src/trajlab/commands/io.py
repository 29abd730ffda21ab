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
