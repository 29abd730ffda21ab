"""Every subcommand, in ``--help`` order, and the error classes whose message is meant for the user.

Each module here has ``register(subparsers)``, which adds its parser and sets ``func`` (the handler).
Only :mod:`trajlab.cli` calls them (and reads argv and the environment). The modules import only the
standard library and ``trajlab.commands.io`` at module level (torch, numpy and matplotlib are imported
inside the handlers), so ``trajlab --help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from trajlab.commands import average, demo, presets, probe, report, reproduce, runs, theory, train

# train: a run from a config; presets: the configs; demo: the README's main command; runs: show, verify and
# table run directories; theory: the noisy quadratic model's maps and predictions; average: post-hoc
# averages of a recorded run; probe: fixed-batch line profiles, loss matrix, alignment; report: the HTML
# report; reproduce: the paper's claims A-H.
REGISTRARS: list[Callable[[Any], None]] = [
    train.register,
    presets.register,
    demo.register,
    runs.register,
    theory.register,
    average.register,
    probe.register,
    report.register,
    reproduce.register,
]


def user_errors() -> tuple[type[BaseException], ...]:
    """Error classes whose message is meant for the user (one line, exit status 2)."""
    from trajlab.averaging import NotRepresentableError
    from trajlab.commands.io import UsageError
    from trajlab.config import ConfigError
    from trajlab.data import DataError
    from trajlab.models import ModelError
    from trajlab.runs.runner import RunDirError
    from trajlab.trajectory import TrajectoryError

    return (
        UsageError,
        ConfigError,
        DataError,
        ModelError,
        RunDirError,
        TrajectoryError,
        NotRepresentableError,
    )


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def classify(exc: BaseException) -> tuple[int, str]:
    """The exit status and the one line to print for an error that ended a command.

    Out of disk space anywhere in the chain: 3. Damage found (a file that differs from its checksum, a
    symlink planted in a run directory) and runtime failures: 1. Problems with what the user asked: 2.
    Anything else is a failure too (1), said in one line; ``--log-level DEBUG`` shows the traceback.
    """
    import errno

    from trajlab.commands.io import EXIT_DISK_FULL, EXIT_FAILED, EXIT_USAGE
    from trajlab.files import ChecksumError, UnsafePathError
    from trajlab.train.engine import RankFailed, TrainingDiverged
    from trajlab.train.metrics import MetricsDamaged
    from trajlab.trajectory import DamageError

    chain = _chain(exc)
    if any(isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) for e in chain):
        where = next((e.filename for e in chain if isinstance(e, OSError) and e.filename), None)
        return (
            EXIT_DISK_FULL,
            f"error: out of disk space{f' writing {where}' if where else ''} ({_text(exc)})",
        )
    if isinstance(exc, (DamageError, ChecksumError, MetricsDamaged, UnsafePathError)):
        return EXIT_FAILED, f"error: {_text(exc)}"
    if isinstance(exc, user_errors()):
        return EXIT_USAGE, f"error: {_text(exc)}"
    if isinstance(exc, TrainingDiverged):
        return EXIT_FAILED, _text(exc)
    if isinstance(exc, RankFailed):
        return EXIT_FAILED, f"error: {_text(exc)}"
    if isinstance(exc, OSError):
        return EXIT_FAILED, f"error: {exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}"
    return (
        EXIT_FAILED,
        f"error: {type(exc).__name__}: {_text(exc)} (run with --log-level DEBUG for the traceback)",
    )


def _text(exc: BaseException) -> str:
    """The error's message on one line."""
    if isinstance(exc, OSError) and exc.strerror and not exc.filename and exc.args and len(exc.args) == 2:
        text = str(exc.strerror)
    else:
        text = str(exc)
    return " ".join(text.split()) or type(exc).__name__
