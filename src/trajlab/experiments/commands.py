"""Subcommands that live next to their features: each ``cmd_*`` module has ``register(subparsers)``,
which adds its parser and sets ``func``. Only :mod:`trajlab.cli` calls them (and reads argv).

The ``cmd_*`` modules import only the standard library at module level (torch, numpy and matplotlib are
imported inside the handlers), so ``trajlab --help`` stays fast.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

# theory: the noisy quadratic model's maps and predictions; average: post-hoc averages of a recorded run;
# probe: fixed-batch line profiles, loss matrix, alignment; report: the HTML report; reproduce: the
# paper's claims A-H.
_COMMAND_MODULES = ("cmd_theory", "cmd_average", "cmd_probe", "cmd_report", "cmd_reproduce")


def _registrar(module: str) -> Callable[[Any], None]:
    def register(sub: Any) -> None:
        importlib.import_module(f"trajlab.experiments.{module}").register(sub)

    register.__name__ = f"register_{module.removeprefix('cmd_')}"
    return register


REGISTRARS: list[Callable[[Any], None]] = [_registrar(m) for m in _COMMAND_MODULES]
