"""The data of the report's averaging sections: the table of final and post-hoc averages over seeds, and
the noisy quadratic model's predictions next to the measured averaging gains (theory vs measurement).

Both read the same rows (online evals, ``analysis/post_hoc.json``) grouped into repetitions over seeds,
so they sit together, apart from the per-run sections in :mod:`~trajlab.reports.sections`; their markup
is in ``templates/averaging.html.j2``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from trajlab.reports import figures
from trajlab.reports.fragments import _figure, _float, _mean_std, _num, _table
from trajlab.reports.run_results import (
    ANALYSIS_DIR,
    POST_HOC,
    THEORY,
    RunResults,
    _final_eval,
    _groups,
    config_key,
)


def _model_rows(r: RunResults) -> list[dict[str, Any]]:
    """Final online evaluations and post-hoc averages of one run as uniform rows."""
    final = _final_eval(r)
    step = final.get("step")
    rows = []
    for name, (_, accs) in figures.eval_series([final], "test_acc").items():
        loss = final.get("test_loss" if name == figures.LIVE else f"{name}/test_loss")
        bn = "running" if name == figures.LIVE else "recalibrated"
        label = "last iterate" if name in (figures.LIVE, "live_recal") else name
        rows.append(
            dict(
                model=label,
                kind="online",
                bn=bn,
                step=step,
                acc=accs[-1],
                loss=_float(loss),
                source=r.source("metrics.jsonl"),
            )
        )
    for row in (r.post_hoc or {}).get("rows", []):
        rows.append(
            dict(
                model=row.get("name"),
                kind="post hoc",
                bn=row.get("bn", (r.post_hoc or {}).get("bn")),
                step=(r.post_hoc or {}).get("at_step"),
                acc=_float(row.get("test_acc")),
                loss=_float(row.get("test_loss")),
                source=r.source(f"{ANALYSIS_DIR}/{POST_HOC}"),
            )
        )
    return rows


def _averaging(runs: Sequence[RunResults]) -> dict[str, Any]:
    """``groups``: per configuration with final evaluations its ``name`` and ``table`` over seeds."""
    groups = []
    for name, members in _groups(runs):
        table: dict[tuple, list[tuple[RunResults, dict[str, Any]]]] = {}
        for m in members:
            for row in _model_rows(m):
                table.setdefault((row["model"], row["kind"], row["bn"]), []).append((m, row))
        if not table:
            continue
        rows = []
        for (model, kind, bn), items in table.items():
            seeds = sorted({str(m.seed) for m, _ in items})
            rows.append(
                [
                    model,
                    kind,
                    bn,
                    _mean_std([row["acc"] for _, row in items]),
                    _mean_std([row["loss"] for _, row in items]),
                    len(items),
                    ", ".join(seeds),
                    ", ".join(sorted({str(row["step"]) for _, row in items})),
                    ", ".join(sorted({row["source"] for _, row in items})),
                ]
            )
        headers = ["model", "built", "BN stats", "test acc", "test loss", "n", "seeds", "at step", "from"]
        groups.append({"name": name, "table": _table(headers, rows)})
    return {"groups": groups}


def _strip_for_lr(config: dict[str, Any]) -> str:
    c = json.loads(config_key(config))
    c.get("optim", {}).pop("lr", None)
    for section in ("averaging", "record", "probes"):
        c.pop(section, None)
    return json.dumps(c, sort_keys=True)


def _reduced_lr_runs(run: RunResults, runs: Sequence[RunResults]) -> list[RunResults]:
    """Runs identical to ``run`` but for a lower optim.lr (and what they record): the reduced-lr branch."""
    lr = _float((run.config or {}).get("optim", {}).get("lr"))
    key = _strip_for_lr(run.config or {})
    return [
        o
        for o in runs
        if o is not run
        and _float((o.config or {}).get("optim", {}).get("lr")) < lr
        and _strip_for_lr(o.config or {}) == key
    ]


def _measured_two_point(members: Sequence[RunResults]) -> dict[str, Any] | None:
    """Test-loss gain of post-hoc two-point averages over the recalibrated last iterate, by gap and seed."""
    gains: dict[int, list[float]] = {}
    for m in members:
        rows = (m.post_hoc or {}).get("rows", [])
        base = [
            _float(r.get("test_loss")) for r in rows if r.get("rule") == "none" and r.get("bn") != "running"
        ]
        if not base:
            continue
        for r in rows:
            if r.get("gap_steps") is not None:
                gains.setdefault(int(r["gap_steps"]), []).append(base[0] - _float(r.get("test_loss")))
    if not gains:
        return None
    gaps = sorted(gains)
    return {
        "gaps": gaps,
        "measured_gain": [float(np.mean(gains[k])) for k in gaps],
        "measured_gain_std": [float(np.std(gains[k], ddof=1)) if len(gains[k]) > 1 else 0.0 for k in gaps],
        "n": [len(gains[k]) for k in gaps],
    }


def _theory(runs: Sequence[RunResults]) -> dict[str, Any]:
    """``groups``: per configuration with a theory fit its ``name``, the ``fit`` table, ``two_point``
    (figure and table; None without two-point predictions) and ``ema`` (None without an EMA prediction)."""
    groups = []
    for name, members in _groups(runs):
        with_theory = [m for m in members if m.theory]
        if not with_theory:
            continue
        th = with_theory[0].theory or {}
        fit = th.get("fit") or {}
        fit_table = _table(
            ["fitted quantity", "value", "how"],
            [
                [k, _float(v) if isinstance(v, int | float) else str(v), (fit.get("how") or {}).get(k, "")]
                for k, v in fit.items()
                if k != "how"
            ],
        )
        groups.append(
            {
                "name": name,
                "fit": fit_table,
                "two_point": _two_point(th, with_theory[0], members),
                "ema": _ema(th.get("ema") or {}, with_theory[0], members, runs),
            }
        )
    return {"groups": groups}


def _two_point(th: dict[str, Any], r: RunResults, members: Sequence[RunResults]) -> dict[str, Any] | None:
    """The two-point figure (prediction vs measured gain) and its table, or None without predictions."""
    tp = dict(th.get("two_point") or {})
    measured = _measured_two_point(members)
    if tp and measured and len(measured["n"]) and max(measured["n"]) > 1:
        # several seeds: the measured points become mean ± std; the prediction stays on its own gaps
        tp.update(measured)
        tp["predicted_gain"] = _on_gaps(th.get("two_point") or {}, measured["gaps"])
    if not tp.get("gaps"):
        return None
    figure = _figure(
        lambda t=tp: figures.plot_two_point_theory(t),
        "Two-point averaging 1/2 (theta_T + theta_(T-k)), BN recalibrated: measured test-loss"
        " gain over the last iterate vs the noisy quadratic model's prediction. " + str(tp.get("note", "")),
        [r.source(f"{ANALYSIS_DIR}/{THEORY}")]
        + [m.source(f"{ANALYSIS_DIR}/{POST_HOC}") for m in members if m.post_hoc],
    )
    pred = tp.get("predicted_gain") or [math.nan] * len(tp["gaps"])
    ratio = tp.get("predicted_ratio") or [math.nan] * len(tp["gaps"])
    std = tp.get("measured_gain_std") or [math.nan] * len(tp["gaps"])
    table = _table(
        ["gap k", "predicted excess-loss ratio", "predicted gain", "measured gain", "± std"],
        [
            [int(k), _float(q), _float(p), _float(g), _float(s)]
            for k, q, p, g, s in zip(tp["gaps"], ratio, pred, tp["measured_gain"], std)
        ],
    )
    return {"figure": figure, "table": table}


def _ema(
    ema: dict[str, Any], r: RunResults, members: Sequence[RunResults], runs: Sequence[RunResults]
) -> dict[str, Any] | None:
    """The EMA vs reduced-lr comparison: ``figures`` (predicted, measured) side by side, the ``table``, and
    ``reduced_lr`` (formatted) when no run at the reduced lr was given, else None. None without ``ema``."""
    from trajlab.reports.theory_plots import plot_ema_vs_reduced_lr

    if not ema:
        return None
    reduced = _reduced_lr_runs(r, runs)
    prediction = ema.get("prediction")
    figs = []
    if prediction:
        figs.append(
            _figure(
                lambda p=prediction: plot_ema_vs_reduced_lr(p),
                "Predicted (noisy quadratic model, fitted curvature)",
                [r.source(f"{ANALYSIS_DIR}/{THEORY}")],
            )
        )
    figs.append(
        _figure(
            lambda ms=members, e=ema, red=reduced: figures.plot_ema_measured(
                {m.label: m.metrics for m in ms},
                str(e.get("name")),
                {o.label: o.metrics for o in red},
            ),
            "Measured (test loss, BN recalibrated)",
            [m.source("metrics.jsonl") for m in [*members, *reduced]],
        )
    )
    rows = [
        [k, _float(v) if isinstance(v, int | float) else str(v)] for k, v in ema.items() if k != "prediction"
    ]
    rows += [[f"reduced-lr run {o.label}: lr", _float(o.config["optim"]["lr"])] for o in reduced]
    return {
        "figures": figs,
        "table": _table(["EMA vs reduced lr", "value"], rows),
        "reduced_lr": None if reduced else _num(_float(ema.get("reduced_lr"))),
    }


def _on_gaps(two_point: dict[str, Any], gaps: Sequence[int]) -> list[float]:
    known = dict(zip(two_point.get("gaps", []), two_point.get("predicted_gain", [])))
    return [_float(known.get(k)) for k in gaps]
