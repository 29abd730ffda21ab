"""The data of the pieces every report section is made of (figures, tables) and the number formats.

Sections (:mod:`~trajlab.reports.sections`, :mod:`~trajlab.reports.averaging_sections`,
:mod:`~trajlab.reports.claims_section`) build these from result files; the templates in ``templates/``
turn them into HTML (``fragments.html.j2`` has one macro per class here). Nothing in this module writes
markup or escapes: every string stays plain text, and the autoescaping template environment
(:mod:`~trajlab.reports.templating`) escapes it where it is placed. Figures are drawn here, once, into PNG
data URIs; a figure that fails to draw carries its error instead of sinking the page.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from trajlab.reports import figures

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Figure:
    """A drawn figure (``uri``: a PNG data URI) or the reason it is missing (``uri`` None, ``error``).

    ``sources`` are the citations shown as ``[from R1:metrics.jsonl, ...]``; ``alt`` defaults to the
    caption.
    """

    caption: str
    sources: tuple[str, ...]
    uri: str | None = None
    error: str = ""
    alt: str | None = None


class Cell(NamedTuple):
    """One table cell as shown: ``numeric`` cells are right-aligned (``td.num``)."""

    text: str
    numeric: bool


@dataclass(frozen=True)
class Table:
    headers: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]


def _figure(
    make: Callable[[], Any], caption: str, sources: Iterable[str], *, alt: str | None = None
) -> Figure:
    """Draw ``make()`` (a matplotlib Figure) into a PNG data URI; a failure becomes ``Figure.error``."""
    sources = tuple(sources)
    try:
        uri = figures.figure_data_uri(make())
    except Exception as e:  # a malformed result file must not sink the whole report
        log.warning("figure %r failed: %s", caption, e)
        return Figure(caption, sources, error=str(e), alt=alt)
    return Figure(caption, sources, uri=uri, alt=alt)


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    """A table of values: numbers (not bools) are formatted by :func:`_num` and right-aligned."""
    body = []
    for row in rows:
        cells = []
        for v in row:
            num = isinstance(v, int | float) and not isinstance(v, bool)
            cells.append(Cell(_num(v), True) if num else Cell(str(v), False))
        body.append(tuple(cells))
    return Table(tuple(str(h) for h in headers), tuple(body))


def _num(x: Any, digits: int = 4) -> str:
    if isinstance(x, float):
        return "n/a" if not math.isfinite(x) else f"{x:.{digits}g}"
    return str(x)


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
