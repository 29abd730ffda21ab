"""One self-contained HTML report from run directories and result files (reads files, never trains).

Inputs, per run directory (each optional but ``config.json``; a section is shown only when its inputs
exist, and says what is missing otherwise)::

    RUN/config.json, provenance.json, summary.json, metrics.jsonl   (trajlab.runs.runner)
    RUN/analysis/line_probes.jsonl   line profiles: {"step", "lr", ...LineProfile.to_dict()} per line
    RUN/analysis/loss_matrix.json    LossMatrix.to_dict()
    RUN/analysis/batch_memory.json   BatchMemory.to_dict() (+ "decay_rate_per_step")
    RUN/analysis/post_hoc.json       {"at_step", "every_steps", "bn", "rows": [{"name", "rule", "test_loss",
                                     "test_acc"}, ...]}: averages built from the stored snapshots
    RUN/analysis/provenance.json     {stage: provenance} of each analysis stage (code version, device, time)
    RUN/analysis/theory.json         {"fit", "two_point", "ema"}: the fitted noisy quadratic model's
                                     predictions next to the measurements
    RUN/analysis/plateau.json        the plateau demo (``trajlab demo``): claims table, lr ladder, EMAs,
                                     two-point gains and the theory's predictions; shown first
    RUN/probes/probe.json            ``trajlab probe RUN``'s result, used for the probe sections when the
                                     analysis has no line probes / loss matrix

Extra result files (``extra_results``) are shown as tables; those of ``trajlab average --out`` and
``trajlab probe`` (``"kind"``: ``trajlab.average`` / ``trajlab.probe``) get their own table / figure.

The page embeds its figures as PNG data URIs, has inline CSS only, needs no script and no network, and
carries a Content-Security-Policy that forbids scripts and remote loads. Every string that comes from a
file (paths, config values, names) is HTML-escaped: the page is rendered from Jinja2 templates
(``templates/``) with autoescaping, and Python hands them plain data, never markup.

Modules: this one gathers the sections' data and renders the page (:func:`build_report`);
:mod:`~trajlab.reports.run_results` reads and groups the files; :mod:`~trajlab.reports.sections`,
:mod:`~trajlab.reports.averaging_sections` and :mod:`~trajlab.reports.claims_section` compute what each
section shows (figures drawn, tables of formatted values; :mod:`~trajlab.reports.fragments`), and
:mod:`~trajlab.reports.templating` holds the template environment. The reading API (``load_run``,
``RunResults``, the file names) is re-exported here.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trajlab import files
from trajlab.reports.averaging_sections import _averaging, _theory
from trajlab.reports.claims_section import claims_section, is_claim
from trajlab.reports.plateau_section import plateau_section
from trajlab.reports.run_results import (
    ANALYSIS_DIR,
    ANALYSIS_PROVENANCE,
    BATCH_MEMORY,
    LINE_PROBES,
    LOSS_MATRIX,
    POST_HOC,
    PROBE_COMMAND_RESULT,
    THEORY,
    RunResults,
    _read_json,
    config_key,
    load_run,
)
from trajlab.reports.sections import _extra, _line_probes, _memory, _overview, _provenance, _training
from trajlab.reports.templating import template_environment
from trajlab.version import __version__

__all__ = [
    "ANALYSIS_DIR",
    "ANALYSIS_PROVENANCE",
    "BATCH_MEMORY",
    "LINE_PROBES",
    "LOSS_MATRIX",
    "POST_HOC",
    "PROBE_COMMAND_RESULT",
    "THEORY",
    "RunResults",
    "build_report",
    "config_key",
    "load_run",
]


def build_report(
    run_dirs: Sequence[str | os.PathLike],
    out_html: str | os.PathLike,
    *,
    extra_results: Sequence[str | os.PathLike] = (),
    title: str = "trajlab report",
    verify: bool = True,
) -> Path:
    """Write one self-contained HTML report of ``run_dirs`` (and extra result JSON files).

    Args:
        run_dirs: trajlab run directories (``config.json`` required, everything else optional).
        out_html: the HTML file to write (parent directories are created; written atomically).
        extra_results: further JSON result files, shown as tables with their provenance.
        title: the page title.
        verify: check each run's own files against their checksums (a damaged one raises).

    Returns:
        The path of the written HTML file.

    Raises:
        FileNotFoundError: a run directory is missing or has no config.json; an extra result is missing.
        ValueError: no run directory and no extra result given.
    """
    if not run_dirs and not extra_results:
        raise ValueError("build_report needs at least one run directory or result file")
    runs = [load_run(d, f"R{i + 1}", verify=verify) for i, d in enumerate(run_dirs)]
    if not verify:
        for r in runs:
            r.problems.append("read with --no-verify: files were not checked against their checksums")
    extras = _read_extras(extra_results)
    # The whole page is rendered before anything is written: a template error leaves no half file.
    page = (
        template_environment()
        .get_template("page.html.j2")
        .render(
            title=title,
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            version=__version__,
            **_run_sections(runs, extras),
            claims=claims_section([(i, p, d) for i, (p, d) in enumerate(extras) if is_claim(d)]),
            extra=_extra(extras),
            provenance=_provenance(runs, extras),
        )
    )
    out = Path(out_html)
    files.make_dirs(out.parent)
    files.write_text_atomic(out, page)
    return out


def _run_sections(runs: Sequence[RunResults], extras: Sequence[tuple[Path, Any]]) -> dict[str, Any]:
    """The data of the sections about runs, by the name the page template gives them."""
    names = ("plateau", "overview", "training", "probes", "memory", "averaging", "theory")
    if not runs:
        # Without run directories (e.g. only claim results) these sections would only say "not
        # available": the page leaves them out (the template skips them when ``overview`` is None).
        return dict.fromkeys(names)
    return {
        "plateau": plateau_section(runs),
        "overview": _overview(runs, extras),
        "training": _training(runs),
        "probes": _line_probes(runs),
        "memory": _memory(runs),
        "averaging": _averaging(runs),
        "theory": _theory(runs),
    }


def _read_extras(paths: Sequence[str | os.PathLike]) -> list[tuple[Path, Any]]:
    """Each extra result file with its parsed JSON; FileNotFoundError names one that is missing or broken."""
    extras = []
    for p in map(Path, paths):
        problems: list[str] = []
        data = _read_json(p, problems)
        if data is None:
            raise FileNotFoundError(f"result file {p}: {'; '.join(problems) or 'not found'}")
        extras.append((p, data))
    return extras
