"""The report's sections about runs and files: overview, training curves, line probes, batch memory,
other result files and provenance.

Each ``_<section>(...)`` returns one ``<section>`` of HTML from already-read results
(:class:`~trajlab.reports.run_results.RunResults`); :func:`trajlab.reports.html.build_report` puts them in
order. The averaging table and the theory comparison live in :mod:`~trajlab.reports.averaging_sections`,
which keeps each module within the module budget.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trajlab.reports import figures
from trajlab.reports.claims_section import is_claim
from trajlab.reports.html_utils import _figure, _float, _missing, _num, _section, _table, esc
from trajlab.reports.run_results import ANALYSIS_DIR, RunResults, _final_eval, _groups


def _overview(runs: Sequence[RunResults], extras: Sequence[tuple[Path, Any]]) -> str:
    rows = []
    for r in runs:
        final = _final_eval(r)
        status = (r.summary or {}).get("status", "incomplete (no summary.json)")
        rows.append(
            [
                r.label,
                str(r.path),
                (r.config or {}).get("preset") or "custom",
                r.seed,
                final.get("step", "n/a"),
                _float(final.get("test_acc")),
                _float(final.get("live_recal/test_acc")),
                status,
            ]
        )
    body = _table(
        [
            "run",
            "directory",
            "preset",
            "seed",
            "last eval step",
            "test acc",
            "test acc (BN recal.)",
            "status",
        ],
        rows,
    )
    problems = [f"{r.label}: {p}" for r in runs for p in r.problems]
    if problems:
        body += "<p class='missing'>Problems reading inputs:</p><ul>"
        body += "".join(f"<li>{esc(p)}</li>" for p in problems) + "</ul>"
    if extras:
        body += "<p>Extra result files: " + ", ".join(f"<code>{esc(p)}</code>" for p, _ in extras) + "</p>"
    return _section("overview", "Runs", body)


def _training(runs: Sequence[RunResults]) -> str:
    body = []
    for name, members in _groups(runs):
        with_evals = [m for m in members if any(row.get("kind") == "eval" for row in m.metrics)]
        if not with_evals:
            body.append(_missing(f"eval rows in metrics.jsonl of {name}", "The run has not evaluated yet."))
            continue
        body.append(
            _figure(
                lambda w=with_evals, n=name: figures.plot_training_curves({m.label: m.metrics for m in w}, n),
                f"Test loss and accuracy of the live model and the online averages: {name}. 'live' uses the"
                " running BN statistics, 'live_recal' and every average recalibrated BN statistics.",
                [m.source("metrics.jsonl") for m in with_evals],
            )
        )
    return _section("training", "Training curves with the online averages", "".join(body))


def _line_probes(runs: Sequence[RunResults]) -> str:
    from trajlab.reports.probe_plots import plot_lr_star_over_training

    body = []
    for r in runs:
        if not r.probes:
            continue
        src = [r.source(r.files["probes"])]
        batch_bn = [p for p in r.probes if p.get("bn", "batch") == "batch"] or r.probes
        body.append(f"<h3>{esc(r.label)}</h3>")
        body.append(
            _figure(
                lambda p=batch_bn: figures.plot_parabolas(p),
                "Loss of a fixed training batch along its own gradient, f(lr) = L_B(theta - lr g_B), at"
                " several checkpoints, with the parabola fitted on [0, 2 lr*] and a held-out batch along the"
                " same line (the control).",
                src,
            )
        )
        records = [p for p in r.probes if "lr_star" in p and "step" in p]
        body.append(
            _figure(
                lambda rec=records: plot_lr_star_over_training(rec), "Best one-step lr* over training", src
            )
        )
        rows = []
        for p in sorted(r.probes, key=lambda p: (p.get("step", 0), p.get("bn", ""))):
            control = p.get("control_at_lr_star") or {}
            rows.append(
                [
                    p.get("step"),
                    p.get("bn"),
                    _float(p.get("lr")),
                    _float(p.get("lr_star")),
                    _float(p.get("lr_star_over_lr")),
                    _float((p.get("fit") or {}).get("r2")),
                    _float(p.get("loss_at_zero")),
                    _float(p.get("one_step_fraction")),
                    _float(next(iter(control.values()), math.nan)),
                    p.get("bracketed"),
                ]
            )
        body.append(
            _table(
                [
                    "step",
                    "BN",
                    "lr",
                    "lr*",
                    "lr*/lr",
                    "R² on [0, 2lr*]",
                    "f(0)",
                    "f(lr*)/f(0)",
                    "held-out L(lr*)/L(0)",
                    "bracketed",
                ],
                rows,
            )
        )
        body.append(_claim_a(batch_bn))
    if not body:
        body.append(
            _missing("line probes (analysis/line_probes.jsonl) in any run", "`trajlab demo` writes them.")
        )
    return _section("probes", "Fixed-batch loss vs lr (claim A)", "".join(body))


def _claim_a(probes: Sequence[dict[str, Any]]) -> str:
    def med(key: Callable[[dict[str, Any]], Any]) -> float:
        vals = [_float(key(p)) for p in probes]
        vals = [v for v in vals if math.isfinite(v)]
        return float(np.median(vals)) if vals else math.nan

    r2 = med(lambda p: (p.get("fit") or {}).get("r2"))
    frac = med(lambda p: p.get("one_step_fraction"))
    ratio = med(lambda p: p.get("lr_star_over_lr"))
    control = med(lambda p: next(iter((p.get("control_at_lr_star") or {}).values()), math.nan))
    return (
        f"<p>Medians over {len(probes)} checkpoints: R² {esc(_num(r2))}, f(lr*)/f(0) {esc(_num(frac))}, "
        f"lr*/lr {esc(_num(ratio))}, held-out loss ratio at lr* {esc(_num(control))}. "
        "<span class='note'>paper.md claim A counts as reproduced when R² ≳ 0.9, f(lr*) is under 10-20% of "
        "f(0), lr* ≫ lr and the held-out batch improves far less.</span></p>"
    )


def _memory(runs: Sequence[RunResults]) -> str:
    from trajlab.reports.probe_plots import plot_batch_memory, plot_loss_matrix

    body = []
    for r in runs:
        if r.loss_matrix is None and r.batch_memory is None:
            continue
        body.append(f"<h3>{esc(r.label)}</h3>")
        if r.loss_matrix is not None:
            body.append(
                _figure(
                    lambda m=r.loss_matrix: plot_loss_matrix(m),
                    "Loss matrix: training batches B_u (rows; x marks the step u that used them) and"
                    " held-out batches at stored checkpoints (columns)",
                    [r.source(r.files["matrix"])],
                )
            )
        if r.batch_memory is not None:
            rate = _float(r.batch_memory.get("decay_rate_per_step"))
            body.append(
                _figure(
                    lambda m=r.batch_memory: plot_batch_memory(m),
                    "Batch memory (claim B): held-out mean loss minus the loss of a batch, against steps"
                    f" since that batch was used; fitted decay rate per step {_num(rate)}",
                    [r.source(r.files["memory"])],
                )
            )
    if not body:
        body.append(_missing("a loss matrix (analysis/loss_matrix.json)", "`trajlab demo` writes one."))
    return _section("memory", "Loss matrix and batch memory (claim B)", "".join(body))


def _flatten(data: Any, prefix: str = "", depth: int = 0) -> list[tuple[str, str]]:
    if isinstance(data, dict) and depth < 4:
        out = []
        for k, v in data.items():
            out.extend(_flatten(v, f"{prefix}.{k}" if prefix else str(k), depth + 1))
        return out
    if isinstance(data, list) and data and all(isinstance(v, int | float) for v in data):
        shown = ", ".join(_num(float(v)) for v in data[:8])
        return [(prefix, f"[{shown}{', ...' if len(data) > 8 else ''}] ({len(data)} values)")]
    if isinstance(data, list | dict):
        text = json.dumps(data)
        return [(prefix, text if len(text) <= 200 else text[:200] + " ...")]
    return [(prefix, _num(data) if isinstance(data, float) else str(data))]


def _extra(extras: Sequence[tuple[Path, Any]]) -> str:
    if not extras:
        return ""
    body = []
    for i, (path, data) in enumerate(extras):
        if is_claim(data):  # shown by the claims section
            continue
        body.append(f"<h3>X{i + 1}: {esc(path.name)}</h3>")
        kind = data.get("kind") if isinstance(data, dict) else None
        if kind == "trajlab.average" and isinstance(data.get("rows"), list):
            # ``trajlab average --out FILE``: one row per (rule, step, BN mode)
            body.append(
                f"<p>Post-hoc averages of <code>{esc(data.get('run_dir'))}</code>, updated every "
                f"{esc(data.get('every_steps'))} step(s).</p>"
            )
            keys = ("rule", "at_step", "bn", "test_loss", "test_acc")
            body.append(_table(keys, [[row.get(k) for k in keys] for row in data["rows"]]))
            data = {k: v for k, v in data.items() if k not in ("rows", "run_config", "run_provenance")}
        elif kind == "trajlab.probe" and data.get("line"):
            body.append(
                _figure(
                    lambda d=data: figures.plot_parabolas(d["line"]),
                    "Line profiles from `trajlab probe`",
                    [f"X{i + 1}"],
                )
            )
            data = {k: v for k, v in data.items() if k not in ("line", "matrix", "alignment", "run_config")}
        items = [(k, v) for k, v in _flatten(data) if not k.startswith("provenance")]
        body.append(_table(["field", "value"], items[:300]))
        if len(items) > 300:
            body.append(f"<p class='note'>{len(items) - 300} more fields in {esc(path)}</p>")
    return _section("extra", "Other results", "".join(body)) if body else ""


_PROVENANCE_KEYS = ("trajlab", "python", "torch", "numpy", "device", "platform", "hostname", "created_utc")


def _provenance_rows(prov: dict[str, Any]) -> list[list[Any]]:
    git = prov.get("git") or {}
    rows = [["git revision", f"{git.get('revision')}{' (dirty)' if git.get('dirty') else ''}"]]
    if prov.get("source_sha256"):  # `trajlab --version` prints the installed code's digest
        rows.append(["source digest (sha256)", prov["source_sha256"]])
    rows += [[k, prov.get(k)] for k in _PROVENANCE_KEYS if k in prov]
    rows.append(["command", " ".join(map(str, prov.get("command") or [])) or "(library call)"])
    for res in prov.get("resumes", []):
        rows.append(["resumed", f"at step {res.get('at_step')} on {res.get('created_utc')}"])
    return rows


def _provenance(runs: Sequence[RunResults], extras: Sequence[tuple[Path, Any]]) -> str:
    body = []
    for r in runs:
        cfg = r.config or {}
        rows = [["directory", str(r.path)], ["preset", cfg.get("preset") or "custom"], ["seed", r.seed]]
        rows += _provenance_rows(r.provenance or {}) if r.provenance else [["provenance.json", "missing"]]
        body.append(f"<h3>{esc(r.label)}</h3>" + _table(["", ""], rows))
        stamps = r.analysis_provenance or {}
        if isinstance(stamps, dict) and stamps:
            body.append(
                f"<p>{esc(r.label)}: analysis stages (files under <code>{ANALYSIS_DIR}/</code>)</p>"
                + _table(
                    ["stage", "git revision", "trajlab", "torch", "device", "computed (UTC)"],
                    [_stamp_row(name, st) for name, st in stamps.items() if isinstance(st, dict)],
                )
            )
        body.append(
            f"<details><summary>{esc(r.label)} config.json (the fully resolved configuration)</summary>"
            f"<pre>{esc(json.dumps(cfg, indent=2))}</pre></details>"
        )
    for i, (path, data) in enumerate(extras):
        prov = data.get("provenance") if isinstance(data, dict) else None
        rows = [["file", str(path)]] + (
            _provenance_rows(prov) if isinstance(prov, dict) else [["provenance", "none"]]
        )
        body.append(f"<h3>X{i + 1}</h3>" + _table(["", ""], rows))
    return _section("provenance", "Provenance", "".join(body))


def _stamp_row(stage: str, prov: dict[str, Any]) -> list[Any]:
    git = prov.get("git") or {}
    rev = f"{git.get('revision')}{' (dirty)' if git.get('dirty') else ''}"
    return [stage, rev, prov.get("trajlab"), prov.get("torch"), prov.get("device"), prov.get("created_utc")]
