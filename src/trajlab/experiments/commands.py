"""Subcommands that live next to their features: each registrar adds a parser to ``trajlab``'s
subparsers and sets ``func``. Only :mod:`trajlab.cli` calls them (and reads argv)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

REGISTRARS: list[Callable[[Any], None]] = []
