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
    RUN/probes/probe.json            ``trajlab probe RUN``'s result, used for the probe sections when the
                                     analysis has no line probes / loss matrix

Extra result files (``extra_results``) are shown as tables; those of ``trajlab average --out`` and
``trajlab probe`` (``"kind"``: ``trajlab.average`` / ``trajlab.probe``) get their own table / figure.

The page embeds its figures as PNG data URIs, has inline CSS only, needs no script and no network, and
carries a Content-Security-Policy that forbids scripts and remote loads. Every string that comes from a
file (paths, config values, names) is HTML-escaped.

Modules: this one assembles the page (:func:`build_report`); :mod:`~trajlab.reports.run_results` reads
and groups the files, :mod:`~trajlab.reports.html_utils` escapes and builds fragments, and
:mod:`~trajlab.reports.sections` / :mod:`~trajlab.reports.averaging_sections` build the sections. The
reading API (``load_run``, ``RunResults``, the file names) is re-exported here.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Sequence
from pathlib import Path

from trajlab.reports.averaging_sections import _averaging, _theory
from trajlab.reports.claims_section import claims_section, is_claim
from trajlab.reports.html_utils import Raw, esc
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
    "Raw",
    "RunResults",
    "build_report",
    "config_key",
    "esc",
    "load_run",
]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1100px;
padding:1em 2em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:.8em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption,.note{color:#555;font-size:.88em}.missing{color:#8a5a00;background:#fff8e6;padding:.3em .6em}
.side{display:flex;flex-wrap:wrap;gap:1em}.side figure{flex:1 1 420px}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.8em;max-height:30em}code{font-size:.9em}
"""
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def build_report(
    run_dirs: Sequence[str | os.PathLike],
    out_html: str | os.PathLike,
    *,
    extra_results: Sequence[str | os.PathLike] = (),
    title: str = "trajlab report",
) -> Path:
    """Write one self-contained HTML report of ``run_dirs`` (and extra result JSON files).

    Args:
        run_dirs: trajlab run directories (``config.json`` required, everything else optional).
        out_html: the HTML file to write (parent directories are created; written atomically).
        extra_results: further JSON result files, shown as tables with their provenance.
        title: the page title.

    Returns:
        The path of the written HTML file.

    Raises:
        FileNotFoundError: a run directory is missing or has no config.json; an extra result is missing.
        ValueError: no run directory and no extra result given.
    """
    if not run_dirs and not extra_results:
        raise ValueError("build_report needs at least one run directory or result file")
    runs = [load_run(d, f"R{i + 1}") for i, d in enumerate(run_dirs)]
    extras = []
    for p in extra_results:
        p = Path(p)
        problems: list[str] = []
        data = _read_json(p, problems)
        if data is None:
            raise FileNotFoundError(f"result file {p}: {'; '.join(problems) or 'not found'}")
        extras.append((p, data))
    # Without run directories (e.g. only claim results) the run sections would only say "not available".
    run_parts = (
        [_overview(runs, extras), _training(runs), _line_probes(runs), _memory(runs), _averaging(runs)]
        + [_theory(runs)]
        if runs
        else []
    )
    parts = [
        *run_parts,
        claims_section([(i, p, d) for i, (p, d) in enumerate(extras) if is_claim(d)]),
        _extra(extras),
        _provenance(runs, extras),
    ]
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{_CSP}\">"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{esc(title)}</h1><p class='note'>Generated {esc(created)} by trajlab {esc(__version__)}"
        " from result files only. Every figure and table cites its source as <code>R&lt;n&gt;:file</code>;"
        " the provenance section maps R&lt;n&gt; to its run directory, config, seed and code version.</p>"
        + "".join(parts)
        + "</body></html>\n"
    )
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out
