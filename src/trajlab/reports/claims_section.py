"""The report's claims section: ``trajlab reproduce``'s ``claim_<X>.json`` files shown as a verdict table,
then per claim its criterion, the checks behind the verdict, the window it was measured in, its headline
numbers and its figure (the PNG the driver wrote next to the JSON, embedded).

Kept apart from :mod:`~trajlab.reports.sections` because it reads a different kind of input (claim result
documents, not run directories) and embeds image files instead of drawing figures.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trajlab.reports.html_utils import _num, _section, _table, esc

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


def _window(doc: dict[str, Any]) -> str:
    w = doc.get("window")
    if not isinstance(w, dict) or "branch_step" not in w:
        return ""
    if w.get("in_plateau"):
        answer, why = "yes", f"the {w.get('stationarity', 'train loss')} plateaued in every seed"
    else:
        answer, why = "no", "neither the train loss nor the held-out loss plateaued in every seed"
    return (
        f"<p>Window [{esc(w.get('branch_step'))}, {esc(w.get('end_step'))}] "
        f"({esc(w.get('length_steps'))} steps); quasi-stationary: <b>{answer}</b> ({esc(why)}).</p>"
    )


def claims_section(claims: Sequence[tuple[int, Path, dict[str, Any]]]) -> str:
    """The claims section; ``claims`` holds (index among the extra results, path, document)."""
    if not claims:
        return ""
    order = sorted(claims, key=lambda c: str(c[2].get("claim")))
    rows = []
    for i, _, d in order:
        v = d["verdict"]
        seeds = ", ".join(map(str, d.get("seeds") or []))
        budget = d.get("budget", "")
        rows.append([d.get("claim"), v.get("verdict"), v.get("n", ""), seeds, budget, f"X{i + 1}"])
    body = [_table(["claim", "verdict", "n", "seeds", "budget", "from"], rows)]
    body.append(
        "<p class='note'>Verdicts are computed by the drivers in <code>trajlab.experiments.claims</code> "
        "from the criterion shown with each claim; <i>inconclusive</i> means a precondition (such as a "
        "quasi-stationary window) did not hold, so the checks say nothing about the claim.</p>"
    )
    for i, path, d in order:
        v = d["verdict"]
        claim = esc(d.get("claim"))
        body.append(f"<h3 id='claim-{claim}'>Claim {claim}: {esc(v.get('verdict'))}</h3>")
        body.append(f"<p><b>Criterion.</b> {esc(v.get('criterion', ''))}</p>")
        if d.get("protocol"):
            body.append(f"<p class='note'><b>Protocol.</b> {esc(d['protocol'])}</p>")
        body.append(_window(d))
        checks = [[f"precondition: {k}", _yes_no(x)] for k, x in (v.get("preconditions") or {}).items()]
        checks += [[k, _yes_no(x)] for k, x in (v.get("checks") or {}).items()]
        if checks:
            body.append(_table(["check", "passed"], checks))
        head = _headline(v)
        if head:
            body.append(_table(["number", "value"], head))
        for fig in d.get("figures") or []:
            uri, problem = _embedded_png(path, fig)
            name = Path(str(fig)).name
            if uri is None:
                body.append(f"<p class='missing'>figure {esc(name)} {esc(problem)}</p>")
            else:
                body.append(
                    f'<figure><img src="{uri}" alt="claim {esc(d.get("claim"))}: {esc(name)}">'
                    f"<figcaption>{esc(name)} <span class='note'>[from X{i + 1}]</span></figcaption></figure>"
                )
    return _section("claims", "The paper's claims", "".join(body))
