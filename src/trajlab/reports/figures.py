"""Figures of the HTML report, built from result dicts (parsed JSON), and their PNG data URIs.

Like :mod:`trajlab.reports.probe_plots` and :mod:`trajlab.reports.theory_plots` (which this module reuses
for single panels), every function takes plain dicts/lists read from result files and returns a
``matplotlib.figure.Figure`` built without pyplot (no global state, Agg-safe). Nothing here trains, loads
a model or touches a GPU.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

# Metric names of the eval rows in metrics.jsonl: "test_acc" (the live model, running BN statistics),
# "live_recal/test_acc" (the live model with recalibrated BN), "<average>/test_acc" (online averages).
LIVE = "live"


def figure_data_uri(fig: Figure, *, dpi: int = 96) -> str:
    """The figure as a ``data:image/png;base64,...`` URI (self-contained: no file, no network)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def eval_series(rows: Sequence[Mapping[str, Any]], metric: str = "test_acc") -> dict[str, tuple[list, list]]:
    """``{model name: (steps, values)}`` of ``metric`` from metrics.jsonl eval rows.

    The live model is ``"live"``; every ``"<name>/<metric>"`` key gives a series ``name``.
    """
    out: dict[str, tuple[list, list]] = {}
    for row in rows:
        if row.get("kind") != "eval":
            continue
        for key, value in row.items():
            if key == metric:
                name = LIVE
            elif key.endswith("/" + metric):
                name = key[: -len(metric) - 1]
            else:
                continue
            value = _number(value)
            if value is None:
                continue
            steps, values = out.setdefault(name, ([], []))
            steps.append(int(row["step"]))
            values.append(value)
    return out


def _number(value: Any) -> float | None:
    try:
        x = float(value)  # metrics.jsonl writes nan/inf as strings
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def plot_training_curves(runs: Mapping[str, Sequence[Mapping[str, Any]]], title: str = "") -> Figure:
    """Test loss and accuracy over training of the live model and every online average.

    Args:
        runs: ``{run label: metrics.jsonl rows}``; several runs (seeds of one config) share colours per
            model, one line each.
        title: figure title.
    """
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    axes = fig.subplots(1, 2)
    colours: dict[str, str] = {}
    for i, rows in enumerate(runs.values()):
        for ax, metric in zip(axes, ("test_loss", "test_acc")):
            for name, (steps, values) in sorted(eval_series(rows, metric).items()):
                colour = colours.setdefault(name, f"C{len(colours) % 10}")
                ax.plot(
                    steps,
                    values,
                    "o-" if len(steps) < 30 else "-",
                    ms=3,
                    color=colour,
                    alpha=1.0 if len(runs) == 1 else 0.6,
                    label=name if i == 0 else None,
                )
        train = [(int(r["step"]), _number(r.get("train_loss"))) for r in rows if r.get("kind") == "train"]
        train = [(s, v) for s, v in train if v is not None]
        if train:
            axes[0].plot(*zip(*train), color="0.6", lw=0.7, label="train loss (running)" if i == 0 else None)
    for ax, ylabel in zip(axes, ("loss", "test accuracy")):
        ax.set(xlabel="step", ylabel=ylabel)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_parabolas(profiles: Sequence[Mapping[str, Any]], max_panels: int = 6) -> Figure:
    """Loss of the probed batch vs lr at several checkpoints: points, fitted parabola, held-out control.

    Args:
        profiles: line-probe records (``step`` plus ``LineProfile.to_dict()`` fields), one per checkpoint.
        max_panels: at most this many panels, evenly spread over the records.
    """
    profiles = sorted(profiles, key=lambda p: p.get("step", 0))
    if len(profiles) > max_panels:
        picks = np.unique(np.linspace(0, len(profiles) - 1, max_panels).round().astype(int))
        profiles = [profiles[i] for i in picks]
    cols = min(3, len(profiles))
    rows = -(-len(profiles) // cols)
    fig = Figure(figsize=(3.6 * cols, 2.9 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, p in zip(axes, profiles):
        lrs, losses = np.asarray(p["lrs"], float), np.asarray(p["losses"], float)
        ax.plot(lrs, losses, "o", ms=3, color="C0", label="train batch")
        fit = p.get("fit") or {}
        a, b, c = (_number(fit.get(k)) for k in ("a", "b", "c"))
        if a is not None and b is not None and c is not None:
            x = np.linspace(0, lrs.max(), 200)
            ax.plot(x, a * x**2 + b * x + c, "-", lw=1, color="C0", alpha=0.7, label="parabola fit")
        for j, (name, values) in enumerate((p.get("control_losses") or {}).items()):
            ax.plot(lrs, np.asarray(values, float), ".--", lw=0.8, color=f"C{j + 1}", label=name)
        lr_star = _number(p.get("lr_star"))
        if lr_star is not None:
            ax.axvline(lr_star, color="k", ls=":", lw=0.8)
        r2 = _number(fit.get("r2"))
        frac = _number(p.get("one_step_fraction"))
        ax.set_title(f"step {p.get('step', '?')}: R²={_fmt(r2)}, f(lr*)/f(0)={_fmt(frac)}", fontsize=8)
        ax.set_xlabel("lr", fontsize=8)
        ax.set_ylabel("loss", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=6)
    for ax in axes[len(profiles) :]:
        ax.set_visible(False)
    return fig


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}g}"


def plot_two_point_theory(result: Mapping[str, Any]) -> Figure:
    """Measured vs predicted gain in test loss of the two-point average over the last iterate, by gap.

    Args:
        result: ``{"gaps", "measured_gain", "measured_gain_std" (optional), "predicted_gain"}``
            (the ``two_point`` part of the demo's ``theory.json``).
    """
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    gaps = np.asarray(result["gaps"], float)
    measured = np.asarray(result["measured_gain"], float)
    std = result.get("measured_gain_std")
    if std is not None:
        ax.errorbar(gaps, measured, yerr=np.asarray(std, float), fmt="o", ms=4, label="measured (±std)")
    else:
        ax.plot(gaps, measured, "o", ms=4, label="measured")
    if result.get("predicted_gain") is not None:
        ax.plot(gaps, np.asarray(result["predicted_gain"], float), "-", label="NQM prediction")
    half = _number(result.get("half_lr_gain"))
    if half is not None:
        ax.axhline(half, color="C2", ls=":", label="NQM: SGD at lr/2")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xscale("log")
    ax.set_xticks(gaps, [f"{k:g}" for k in gaps])
    ax.minorticks_off()
    ax.set(xlabel="gap k (steps)", ylabel="test loss: last iterate - two-point")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def plot_ema_measured(
    runs: Mapping[str, Sequence[Mapping[str, Any]]], ema_name: str, reduced: Mapping[str, Sequence] | None
) -> Figure:
    """Measured test loss of an online EMA next to the live model (recalibrated BN) and, when given, a
    run at the reduced lr.

    Args:
        runs: ``{run label: metrics rows}`` of the averaged run(s).
        ema_name: the EMA's metric prefix (e.g. ``"ema_0.99"``).
        reduced: ``{run label: metrics rows}`` of runs at the reduced lr, or None.
    """
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for i, rows in enumerate(runs.values()):
        series = eval_series(rows, "test_loss")
        for name, colour in ((ema_name, "C1"), ("live_recal", "C0")):
            if name in series:
                ax.plot(*series[name], "o-", ms=3, color=colour, label=name if i == 0 else None)
    for i, rows in enumerate((reduced or {}).values()):
        series = eval_series(rows, "test_loss")
        name = "live_recal" if "live_recal" in series else LIVE
        if name in series:
            ax.plot(*series[name], "s--", ms=3, color="C2", label="run at reduced lr" if i == 0 else None)
    ax.set(xlabel="step", ylabel="test loss", title="measured")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return fig
