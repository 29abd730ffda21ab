"""Escaping and the small HTML fragments every report section is built from (figure, table, notes).

Kept apart from the sections so that each section module imports one shared, escaping-safe toolkit: every
string that comes from a file goes through :func:`esc` here, and figures are embedded as PNG data URIs by
:func:`_figure` (a figure that fails to draw becomes a note instead of sinking the page).
"""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from trajlab.reports import figures

log = logging.getLogger(__name__)


class Raw(str):
    """A fragment of HTML already built (escaped) by this module; :func:`esc` leaves it as is."""


def esc(value: Any) -> str:
    """HTML-escape ``str(value)`` (quotes included); :class:`Raw` fragments pass through."""
    return value if isinstance(value, Raw) else html.escape(str(value), quote=True)


def _figure(make: Callable[[], Any], caption: str, sources: Iterable[str]) -> str:
    try:
        uri = figures.figure_data_uri(make())
    except Exception as e:  # a malformed result file must not sink the whole report
        log.warning("figure %r failed: %s", caption, e)
        return f'<p class="missing">figure "{esc(caption)}" could not be drawn: {esc(e)}</p>'
    src = ", ".join(sources)
    return (
        f'<figure><img src="{uri}" alt="{esc(caption)}">'
        f"<figcaption>{esc(caption)} <span class='note'>[from {esc(src)}]</span></figcaption></figure>"
    )


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for v in row:
            num = isinstance(v, int | float) and not isinstance(v, bool)
            cells.append(f"<td class='num'>{esc(_num(v))}</td>" if num else f"<td>{esc(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _num(x: Any, digits: int = 4) -> str:
    if isinstance(x, float):
        return "n/a" if not math.isfinite(x) else f"{x:.{digits}g}"
    return str(x)


def _missing(what: str, hint: str) -> str:
    return f'<p class="missing">Not available: {esc(what)}. {esc(hint)}</p>'


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def _mean_std(values: Sequence[float]) -> str:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.4f}"
    return f"{np.mean(vals):.4f} ± {np.std(vals, ddof=1):.4f}"


def _float(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan
