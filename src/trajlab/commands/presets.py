"""``trajlab presets [NAME]``: list the presets (TOML data files), or print one."""

from __future__ import annotations

import argparse
from typing import Any

from trajlab.commands.io import emit


def register(sub: Any) -> None:
    """Add ``presets`` to ``trajlab``'s subparsers."""
    p = sub.add_parser("presets", help="list presets, or print one", description="List presets or print one.")
    p.add_argument("name", nargs="?", help="print this preset's TOML")
    p.set_defaults(func=cmd_presets)


def cmd_presets(args: argparse.Namespace) -> int:
    """Handler of ``trajlab presets``."""
    from trajlab.config import preset_description, preset_names, preset_text

    if args.name:
        emit(preset_text(args.name).rstrip())
        return 0
    names = preset_names()
    width = max(len(n) for n in names)
    for name in names:
        emit(f"{name:<{width}}  {preset_description(name)}")
    return 0
