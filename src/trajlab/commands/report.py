"""``trajlab report RUN_DIR... --out report.html``: one self-contained HTML page from result files.

The registrar only builds the parser; :mod:`trajlab.cli` reads argv and calls ``func``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from trajlab.commands.io import emit


def cmd_report(args: argparse.Namespace) -> int:
    """Write the report of ``args.inputs`` (run directories; ``.json`` files count as extra results)."""
    from trajlab.files import read_checksums
    from trajlab.reports.html import build_report
    from trajlab.runs.runner import RunDirError
    from trajlab.trajectory.errors import DamageError

    run_dirs, extras = [], list(args.result or [])
    for item in args.inputs:
        path = Path(item)
        if path.is_file() and path.suffix == ".json":
            extras.append(path)
        elif not path.is_dir():
            raise RunDirError(f"{item} is neither a run directory nor a .json result file")
        elif not ((path / "config.json").is_file() or (path / "recipe.json").is_file()):
            listed = [n for n in ("config.json", "recipe.json") if n in read_checksums(path)]
            if listed:  # it was a run: its config is lost, which is damage, not a usage error
                raise DamageError(
                    f"{path / listed[0]}: missing (listed in checksums.json); run `trajlab runs verify`"
                )
            raise RunDirError(f"{item} is not a trajlab run directory (no config.json or recipe.json)")
        else:
            run_dirs.append(path)
    for extra in extras:
        if not Path(extra).is_file():
            raise RunDirError(f"result file {extra} does not exist")
    out = build_report(run_dirs, args.out, extra_results=extras, title=args.title, verify=not args.no_verify)
    emit(f"report: {out.resolve()}")
    return 0


def register(sub: Any) -> None:
    """Add ``report`` to ``trajlab``'s subparsers."""
    p = sub.add_parser(
        "report",
        help="write one self-contained HTML report from run directories",
        description="Write one self-contained HTML file (figures embedded, no network needed) from run "
        "directories and result JSON files: training curves with the averages, line probes, loss matrix, "
        "batch memory, the averaging table over seeds, theory vs measurement and provenance. Reads result "
        "files only; never trains.",
    )
    p.add_argument("inputs", nargs="+", metavar="RUN_DIR", help="run directories (or result .json files)")
    p.add_argument("--out", default="report.html", help="HTML file to write (default: report.html)")
    p.add_argument(
        "--result", action="append", metavar="FILE", help="an extra result JSON file to include (repeatable)"
    )
    p.add_argument("--title", default="trajlab report", help="page title")
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="read run files even when they differ from their checksums (the page says so)",
    )
    p.set_defaults(func=cmd_report)
