"""The data of the report's sections about runs and files: overview, training curves, line probes, batch
memory, other result files and provenance.

Each ``_<section>(...)`` returns what the section shows (figures drawn, tables of formatted values, plain
strings) from already-read results (:class:`~trajlab.reports.run_results.RunResults`); the macro of the
same name in ``templates/runs.html.j2`` writes its markup, and :func:`trajlab.reports.html.build_report`
puts the sections in order. The averaging table and the theory comparison live in
:mod:`~trajlab.reports.averaging_sections`, which keeps each module within the module budget.
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
from trajlab.reports.fragments import Table, _figure, _float, _num, _table
from trajlab.reports.run_results import ANALYSIS_DIR, RunResults, _final_eval, _groups


def _overview(runs: Sequence[RunResults], extras: Sequence[tuple[Path, Any]]) -> dict[str, Any]:
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
    table = _table(
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
    return {
        "table": table,
        "problems": [f"{r.label}: {p}" for r in runs for p in r.problems],
        "extras": [str(p) for p, _ in extras],
    }


def _training(runs: Sequence[RunResults]) -> dict[str, Any]:
    """``groups``: per configuration its ``name`` and ``figure`` (None: no eval rows yet)."""
    groups = []
    for name, members in _groups(runs):
        with_evals = [m for m in members if any(row.get("kind") == "eval" for row in m.metrics)]
        if not with_evals:
            groups.append({"name": name, "figure": None})
            continue
        figure = _figure(
            lambda w=with_evals, n=name: figures.plot_training_curves({m.label: m.metrics for m in w}, n),
            f"Test loss and accuracy of the live model and the online averages: {name}. 'live' uses the"
            " running BN statistics, 'live_recal' and every average recalibrated BN statistics.",
            [m.source("metrics.jsonl") for m in with_evals],
        )
        groups.append({"name": name, "figure": figure})
    return {"groups": groups}


def _line_probes(runs: Sequence[RunResults]) -> dict[str, Any]:
    """``runs``: per run with line probes its ``label``, the ``parabolas`` and ``lr_star`` figures, the
    ``table`` of every probe and claim A's ``medians`` (no such run: the template says how to get them)."""
    from trajlab.reports.probe_plots import plot_lr_star_over_training

    shown = []
    for r in runs:
        if not r.probes:
            continue
        src = [r.source(r.files["probes"])]
        batch_bn = [p for p in r.probes if p.get("bn", "batch") == "batch"] or r.probes
        records = [p for p in r.probes if "lr_star" in p and "step" in p]
        parabolas = _figure(
            lambda p=batch_bn: figures.plot_parabolas(p),
            "Loss of a fixed training batch along its own gradient, f(lr) = L_B(theta - lr g_B), at"
            " several checkpoints, with the parabola fitted on [0, 2 lr*] and a held-out batch along the"
            " same line (the control).",
            src,
        )
        lr_star = _figure(
            lambda rec=records: plot_lr_star_over_training(rec), "Best one-step lr* over training", src
        )
        shown.append(
            {
                "label": r.label,
                "parabolas": parabolas,
                "lr_star": lr_star,
                "table": _probe_table(r.probes),
                "medians": _claim_a(batch_bn),
            }
        )
    return {"runs": shown}


def _probe_table(probes: Sequence[dict[str, Any]]) -> Table:
    rows = []
    for p in sorted(probes, key=lambda p: (p.get("step", 0), p.get("bn", ""))):
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
    headers = ["step", "BN", "lr", "lr*", "lr*/lr", "R² on [0, 2lr*]", "f(0)", "f(lr*)/f(0)"]
    return _table([*headers, "held-out L(lr*)/L(0)", "bracketed"], rows)


def _claim_a(probes: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Claim A's medians over the probed checkpoints, formatted: ``n``, ``r2``, ``frac`` (f(lr*)/f(0)),
    ``ratio`` (lr*/lr), ``control`` (held-out loss ratio at lr*)."""

    def med(key: Callable[[dict[str, Any]], Any]) -> str:
        vals = [_float(key(p)) for p in probes]
        vals = [v for v in vals if math.isfinite(v)]
        return _num(float(np.median(vals)) if vals else math.nan)

    return {
        "n": str(len(probes)),
        "r2": med(lambda p: (p.get("fit") or {}).get("r2")),
        "frac": med(lambda p: p.get("one_step_fraction")),
        "ratio": med(lambda p: p.get("lr_star_over_lr")),
        "control": med(lambda p: next(iter((p.get("control_at_lr_star") or {}).values()), math.nan)),
    }


def _memory(runs: Sequence[RunResults]) -> dict[str, Any]:
    """``runs``: per run with a loss matrix or batch memory its ``label`` and ``figures``."""
    from trajlab.reports.probe_plots import plot_batch_memory, plot_loss_matrix

    shown = []
    for r in runs:
        if r.loss_matrix is None and r.batch_memory is None:
            continue
        figs = []
        if r.loss_matrix is not None:
            figs.append(
                _figure(
                    lambda m=r.loss_matrix: plot_loss_matrix(m),
                    "Loss matrix: training batches B_u (rows; x marks the step u that used them) and"
                    " held-out batches at stored checkpoints (columns)",
                    [r.source(r.files["matrix"])],
                )
            )
        if r.batch_memory is not None:
            rate = _float(r.batch_memory.get("decay_rate_per_step"))
            figs.append(
                _figure(
                    lambda m=r.batch_memory: plot_batch_memory(m),
                    "Batch memory (claim B): held-out mean loss minus the loss of a batch, against steps"
                    f" since that batch was used; fitted decay rate per step {_num(rate)}",
                    [r.source(r.files["memory"])],
                )
            )
        shown.append({"label": r.label, "figures": figs})
    return {"runs": shown}


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


_MAX_FIELDS = 300  # rows of an extra result's field table; the rest are counted, not shown


def _extra(extras: Sequence[tuple[Path, Any]]) -> dict[str, Any] | None:
    """``results``: per extra result that is not a claim its ``label`` (X<n>), ``name``, ``path``, the
    ``average`` table or ``probe_figure`` of ``trajlab average``/``probe`` files (else None), the
    ``fields`` table and how many ``more_fields`` it leaves out. None when there is nothing to show."""
    results = []
    for i, (path, data) in enumerate(extras):
        if is_claim(data):  # shown by the claims section
            continue
        label, average, probe_figure = f"X{i + 1}", None, None
        kind = data.get("kind") if isinstance(data, dict) else None
        if kind == "trajlab.average" and isinstance(data.get("rows"), list):
            # ``trajlab average --out FILE``: one row per (rule, step, BN mode)
            keys = ("rule", "at_step", "bn", "test_loss", "test_acc")
            average = {
                "run_dir": str(data.get("run_dir")),
                "every_steps": str(data.get("every_steps")),
                "table": _table(keys, [[row.get(k) for k in keys] for row in data["rows"]]),
            }
            data = {k: v for k, v in data.items() if k not in ("rows", "run_config", "run_provenance")}
        elif kind == "trajlab.probe" and data.get("line"):
            probe_figure = _figure(
                lambda d=data: figures.plot_parabolas(d["line"]),
                "Line profiles from `trajlab probe`",
                [label],
            )
            data = {k: v for k, v in data.items() if k not in ("line", "matrix", "alignment", "run_config")}
        items = [(k, v) for k, v in _flatten(data) if not k.startswith("provenance")]
        results.append(
            {
                "label": label,
                "name": path.name,
                "path": str(path),
                "average": average,
                "probe_figure": probe_figure,
                "fields": _table(["field", "value"], items[:_MAX_FIELDS]),
                "more_fields": max(0, len(items) - _MAX_FIELDS),
            }
        )
    return {"results": results} if results else None


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


def _provenance(runs: Sequence[RunResults], extras: Sequence[tuple[Path, Any]]) -> dict[str, Any]:
    """``runs``: per run its ``label``, provenance ``table``, analysis ``stages`` table (None without
    stamps) and ``config_json``; ``extras``: per extra result its ``label`` and ``table``."""
    shown = []
    for r in runs:
        cfg = r.config or {}
        rows = [["directory", str(r.path)], ["preset", cfg.get("preset") or "custom"], ["seed", r.seed]]
        rows += _provenance_rows(r.provenance or {}) if r.provenance else [["provenance.json", "missing"]]
        stamps = r.analysis_provenance or {}
        stages = None
        if isinstance(stamps, dict) and stamps:
            stages = _table(
                ["stage", "git revision", "trajlab", "torch", "device", "computed (UTC)"],
                [_stamp_row(name, st) for name, st in stamps.items() if isinstance(st, dict)],
            )
        shown.append(
            {
                "label": r.label,
                "table": _table(["", ""], rows),
                "stages": stages,
                "config_json": json.dumps(cfg, indent=2),
            }
        )
    files = []
    for i, (path, data) in enumerate(extras):
        prov = data.get("provenance") if isinstance(data, dict) else None
        rows = [["file", str(path)]] + (
            _provenance_rows(prov) if isinstance(prov, dict) else [["provenance", "none"]]
        )
        files.append({"label": f"X{i + 1}", "table": _table(["", ""], rows)})
    return {"runs": shown, "extras": files, "analysis_dir": ANALYSIS_DIR}


def _stamp_row(stage: str, prov: dict[str, Any]) -> list[Any]:
    git = prov.get("git") or {}
    rev = f"{git.get('revision')}{' (dirty)' if git.get('dirty') else ''}"
    return [stage, rev, prov.get("trajlab"), prov.get("torch"), prov.get("device"), prov.get("created_utc")]
