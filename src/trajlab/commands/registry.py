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
