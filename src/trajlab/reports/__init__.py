"""Plots (matplotlib, from result dicts) and the self-contained HTML report; nothing here trains.

* :func:`build_report` (``trajlab report``): one HTML file from run directories and result files.
* :mod:`trajlab.reports.figures`, :mod:`~trajlab.reports.probe_plots`, :mod:`~trajlab.reports.theory_plots`:
  ``Figure``-returning plot functions.
"""

from trajlab.reports.html import build_report

__all__ = ["build_report"]
