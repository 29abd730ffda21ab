"""The report's claims section: ``trajlab reproduce``'s ``claim_<X>.json`` files shown as a verdict table,
then per claim its criterion, the checks behind the verdict, the window it was measured in, its headline
numbers and its figure (the PNG the driver wrote next to the JSON, embedded). This module gathers the data;
``templates/claims.html.j2`` writes the markup.

Kept apart from :mod:`~trajlab.reports.sections` because it reads a different kind of input (claim result
documents, not run directories) and embeds image files instead of drawing figures.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trajlab.reports.fragments import Figure, _num, _table

log = logging.getLogger(__name__)

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Verdict fields shown elsewhere on the page (or too bulky for the headline table).
_NOT_HEADLINE = {"verdict", "criterion", "checks", "preconditions", "n", "required_n"}
_MAX_HEADLINE_ROWS = 40


def is_claim(data: Any) -> bool:
    """Whether a result document is a ``trajlab reproduce`` claim result."""
    return isinstance(data, dict) and "claim" in data and isinstance(data.get("verdict"), dict)


def _yes_no(value: Any) -> str:
    return {True: "yes", False: "no", None: "n/a (not tested)"}.get(value, str(value))


def _headline(verdict: dict[str, Any]) -> list[list[Any]]:
    """Flatten the verdict's numbers: ``{"mean", "std", "n"}`` dicts become ``mean ± std (n)``."""
    rows: list[list[Any]] = []

    def add(key: str, value: Any, depth: int) -> None:
        if isinstance(value, dict) and {"mean", "std"} <= set(value):
            n = value.get("n")
            rows.append([key, f"{_num(value['mean'])} ± {_num(value['std'])}" + (f" (n={n})" if n else "")])
        elif isinstance(value, dict) and depth < 2:
            for k, v in value.items():
                add(f"{key}.{k}", v, depth + 1)
        elif isinstance(value, list) and len(value) <= 12 and all(isinstance(v, int | float) for v in value):
            rows.append([key, ", ".join(_num(v) for v in value)])
        elif isinstance(value, int | float | str | bool) or value is None:
            rows.append([key, value])

    for key, value in verdict.items():
        if key not in _NOT_HEADLINE:
            add(key, value, 0)
    return rows[:_MAX_HEADLINE_ROWS]


def _embedded_png(json_path: Path, figure: str) -> tuple[str | None, str]:
    """The figure file next to ``json_path`` (by name: the stored path may be relative to another
    working directory) as ``(data URI, "")``, or ``(None, what is wrong)``."""
    path = json_path.parent / Path(str(figure)).name
    try:
        data = path.read_bytes()
    except OSError:
        return None, f"not found next to {json_path.name}"
    if not data.startswith(_PNG_MAGIC):
        log.warning("%s is not a PNG; not embedded", path)
        return None, "is not a PNG file; not embedded"
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii"), ""


def _window(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The measurement window's ends, length, whether it was a plateau and of what; None without one."""
    w = doc.get("window")
    if not isinstance(w, dict) or "branch_step" not in w:
        return None
    return {
        "branch_step": str(w.get("branch_step")),
        "end_step": str(w.get("end_step")),
        "length_steps": str(w.get("length_steps")),
        "in_plateau": bool(w.get("in_plateau")),
        "stationarity": str(w.get("stationarity", "train loss")),
    }


def claims_section(claims: Sequence[tuple[int, Path, dict[str, Any]]]) -> dict[str, Any] | None:
    """The claims section's data (None without claims); ``claims`` holds (index among the extra results,
    path, document). ``table``: the verdicts; ``claims``: per claim what its subsection shows."""
    if not claims:
        return None
    order = sorted(claims, key=lambda c: str(c[2].get("claim")))
    rows = []
    for i, _, d in order:
        v = d["verdict"]
        seeds = ", ".join(map(str, d.get("seeds") or []))
        budget = d.get("budget", "")
        rows.append([d.get("claim"), v.get("verdict"), v.get("n", ""), seeds, budget, f"X{i + 1}"])
    return {
        "table": _table(["claim", "verdict", "n", "seeds", "budget", "from"], rows),
        "claims": [_claim(i, path, d) for i, path, d in order],
    }


def _claim(i: int, path: Path, d: dict[str, Any]) -> dict[str, Any]:
    """One claim's subsection: verdict, criterion, protocol, window, checks and headline tables (None when
    empty) and its figures (read from the PNGs next to the JSON; ``uri`` None with the reason)."""
    v = d["verdict"]
    checks = [[f"precondition: {k}", _yes_no(x)] for k, x in (v.get("preconditions") or {}).items()]
    checks += [[k, _yes_no(x)] for k, x in (v.get("checks") or {}).items()]
    head = _headline(v)
    figs = []
    for fig in d.get("figures") or []:
        uri, problem = _embedded_png(path, fig)
        name = Path(str(fig)).name
        figs.append(
            Figure(name, (f"X{i + 1}",), uri=uri, error=problem, alt=f"claim {d.get('claim')}: {name}")
        )
    return {
        "claim": str(d.get("claim")),
        "verdict": str(v.get("verdict")),
        "criterion": str(v.get("criterion", "")),
        "protocol": str(d.get("protocol") or ""),
        "window": _window(d),
        "checks": _table(["check", "passed"], checks) if checks else None,
        "headline": _table(["number", "value"], head) if head else None,
        "figures": figs,
    }
