"""The report's first section for a plateau-demo run (``RUN/analysis/plateau.json``): one table with the
paper's claims, what the run measured, what the theory predicted and whether they agree; then the plots
(the plateau, EMAs against the lr ladder, two-point gains by gap) and the ladder's readings.

Reads the result file only; draws with matplotlib into data URIs (:mod:`~trajlab.reports.fragments`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from trajlab.reports.fragments import Figure, Table, _figure, _float, _table
from trajlab.reports.run_results import ANALYSIS_DIR, PLATEAU, RunResults


def plateau_section(runs: Sequence[RunResults]) -> dict[str, Any] | None:
    """The section's data for the first run with a plateau result (None when no run has one)."""
    r = next((r for r in runs if r.plateau), None)
    if r is None:
        return None
    doc, src = r.plateau, r.source(f"{ANALYSIS_DIR}/{PLATEAU}")
    table = _table(
        ("paper's claim", "this run measured", "the theory predicted", "agreement"),
        [(row["claim"], row["measured"], row["predicted"], row["agreement"]) for row in doc.get("table", [])],
    )
    return {
        "claims": table,
        "how": _how(doc),
        "figures": [
            _figure(lambda: _plot_f(doc), "EMAs against the lr ladder (test loss)", [src]),
            _figure(lambda: _plot_e(doc), "two-point gain by gap, the lr/2 branch, the theory", [src]),
            _figure(
                lambda: _plot_plateau(doc), "where the plateau starts (the project's plateau test)", [src]
            ),
        ],
        "ladder": _ladder_table(doc),
        "source": src,
    }


def _how(doc: dict[str, Any]) -> str:
    f_ends, tp = doc.get("f_end_times") or [], doc.get("two_point", {})
    ends = tp.get("end_times") or []
    prov = doc.get("provenance") or {}
    f_span = f"{f_ends[0]}..{f_ends[-1]}" if f_ends else "none"
    t_span = f"{ends[0]}..{ends[-1]}" if ends else "none"
    return (
        f"One seed ({doc.get('seeds')}), lr {doc.get('lr')}, momentum {doc.get('momentum')}, "
        f"{doc.get('steps')} steps; ladder branched at step {doc.get('branch_step')} with the base run's "
        f"batches. EMA and ladder readings: test loss averaged over {len(f_ends)} end times ({f_span}); "
        f"two-point gains over {len(ends)} end times ({t_span}), gains = last-iterate test loss minus the "
        f"average's. Theory: multi-timescale heavy-ball model (docs/theory.md §9-11), fitted twice, each "
        f"time without what it predicts. trajlab {prov.get('trajlab')}, git {prov.get('git')}, torch "
        f"{prov.get('torch')}."
    )


def _ladder_table(doc: dict[str, Any]) -> Table:
    pred = doc.get("theory", {}).get("ema_prediction", {})
    fitted = dict(zip(pred.get("ladder_lrs") or [], pred.get("ladder_loss") or []))
    rows = []
    for r in doc.get("ladder", []):
        loss, acc = r["test_loss"], r["test_acc"]
        name = "constant lr (the run)" if _float(r.get("divisor")) == 1 else f"lr/{_float(r['divisor']):.3g}"
        theory = _float(
            next((v for k, v in fitted.items() if math.isclose(_float(k), _float(r["lr"]))), None)
        )
        rows.append(
            (name, _float(r["lr"]), _float(loss["mean"]), _float(loss["se"]), theory, _float(acc["mean"]))
        )
    for e in doc.get("ema", []):
        loss, acc = e["test_loss"], e["test_acc"]
        rows.append(
            (
                f"EMA {e['decay']:g} (measured lr {_float(e['measured_equivalent_lr_loss']):.3g})",
                math.nan,
                _float(loss["mean"]),
                _float(loss["se"]),
                _float(_at(pred.get("ema_loss"), e["decay"], doc)),
                _float(acc["mean"]),
            )
        )
    headers = (
        "run",
        "lr",
        "test loss (mean over end times)",
        "SE",
        "theory (fit without the EMAs)",
        "test acc",
    )
    return _table(headers, rows)


def _at(values: Any, decay: float, doc: dict[str, Any]) -> Any:
    decays = [e["decay"] for e in doc.get("ema", [])]
    try:
        return values[decays.index(decay)]
    except (TypeError, ValueError, IndexError):
        return None


def _smooth(steps: Sequence[int], y: Sequence[float], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Running mean over ``width`` evaluations (centred; the ends, where the window is short, dropped)."""
    x = np.asarray(steps, dtype=np.float64)
    y = np.asarray([_float(v) for v in y], dtype=np.float64)
    if width <= 1 or y.size < width:
        return x, y
    lo = (width - 1) // 2
    return x[lo : lo + y.size - width + 1], np.convolve(y, np.ones(width) / width, mode="valid")


def _plot_f(doc: dict[str, Any]) -> Any:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
    curves = doc["curves"]
    width = 5  # running mean over 5 evaluations: the last iterate moves by +-0.02 between them
    rungs = sorted((k for k in curves if k.startswith("lr/")), key=lambda k: _float(k[3:]))
    cmap = plt.get_cmap("viridis")
    for i, (name, c) in enumerate((k, curves[k]) for k in rungs):
        color = cmap(0.9 * i / max(len(rungs) - 1, 1))
        ax.plot(*_smooth(c["steps"], c["test_loss"], width), color=color, lw=1, label=f"branch {name}")
    c = curves["constant_lr"]
    ax.plot(
        *_smooth(c["steps"], c["test_loss"], width), color="0.5", lw=1, label="constant lr (last iterate)"
    )
    for j, (name, c) in enumerate((k, v) for k, v in curves.items() if k.startswith("ema_")):
        ax.plot(c["steps"], c["test_loss"], color="k", ls=("-", "--", ":")[j % 3], lw=1.4, label=name)
    ax.axvline(doc["branch_step"], color="0.3", lw=0.6)
    ends = doc.get("f_end_times") or []
    if ends:
        ax.axvspan(ends[0], ends[-1], color="0.9", zorder=0, label="end times averaged")
    ax.set_xlabel("step")
    ax.set_ylabel(f"test loss (running mean of {width} evaluations)")
    lows = [
        np.nanmin(_smooth(v["steps"], v["test_loss"], width)[1]) for v in curves.values() if v["test_loss"]
    ]
    highs = [_float(r["test_loss"]["mean"]) for r in doc["ladder"][:1]]
    if lows and highs:
        ax.set_ylim(min(lows) - 0.01, max(highs) + 0.06)
    ax.legend(fontsize=7, ncol=3, loc="upper right")
    return fig


def _plot_e(doc: dict[str, Any]) -> Any:
    import matplotlib.pyplot as plt

    tp, theory = doc["two_point"], doc.get("theory", {})
    fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
    gaps = np.asarray(tp["gaps"], dtype=np.float64)
    gain = np.asarray([_float(v) for v in tp["measured_gain"]])
    se = np.asarray([_float(v) for v in tp["measured_gain_se"]])
    inside = np.isin(gaps, tp.get("gaps_in_plateau") or [])
    ax.errorbar(gaps[inside], gain[inside], yerr=se[inside], fmt="o", color="C0", capsize=2, label="measured")
    if (~inside).any():
        ax.errorbar(
            gaps[~inside], gain[~inside], yerr=se[~inside], fmt="o", mfc="none", color="C0", capsize=2,
            label="measured, earlier point before the plateau",
        )  # fmt: skip
    half = _float(tp.get("half_lr_gain"))
    if math.isfinite(half):
        hs = _float(tp.get("half_lr_gain_se"))
        ax.axhline(half, color="C1", label="lr/2 branch")
        if math.isfinite(hs):
            ax.axhspan(half - hs, half + hs, color="C1", alpha=0.15)
    pred = theory.get("gain_prediction", {})
    if pred.get("gain"):
        g = np.asarray([_float(v) for v in pred["gain"]])
        ax.plot(
            pred["gaps"],
            g,
            "-",
            color="C3",
            label=f"theory (fitted without the gains): {pred.get('fitted_on')}",
        )
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("gap k (steps)")
    ax.set_ylabel("test-loss gain over the last iterate")
    ax.legend(fontsize=7)
    return fig


def _plot_plateau(doc: dict[str, Any]) -> Any:
    import matplotlib.pyplot as plt

    p = doc["plateau"]
    fig, ax = plt.subplots(figsize=(7.5, 3.2), layout="constrained")
    for i, key in enumerate(("train_loss_plateau", "test_loss_plateau")):
        w = p.get(key)
        if not w:
            continue
        ends = np.asarray(w["window_ends"], dtype=np.float64)
        verdict = f"plateau from {w['start_step']}" if w["found"] else "no plateau"
        label = f"{key.split('_plateau')[0].replace('_', ' ')}, window means ({verdict})"
        ax.plot(ends - _float(w["window_steps"]) / 2, w["window_means"], "o-", color=f"C{i}", label=label)
    if p["found"]:
        ax.axvline(p["start_step"], color="C2", label=f"plateau from step {p['start_step']} ({p['series']})")
    branch = doc["branch_step"]
    ax.axvline(branch, color="0.3", ls="--", lw=0.8, label=f"ladder branch point {branch}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)
    return fig


__all__ = ["Figure", "plateau_section"]
