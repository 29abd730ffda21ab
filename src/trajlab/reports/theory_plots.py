"""Plots of the noisy quadratic model's predictions. They read result dicts/arrays and never train.

Each function returns a ``matplotlib.figure.Figure`` built without pyplot (no global state, Agg-safe);
save it with ``fig.savefig(path)``. Inputs are the dicts returned by ``trajlab.theory.predictions``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import ArrayLike


def _axes(title: str, xlabel: str, ylabel: str) -> tuple[Figure, object]:
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def plot_equivalent_schedule(lrs: ArrayLike, base_lr: float | None = None, title: str = "") -> Figure:
    """Equivalent lr schedule (steps 1..T) on log axes, with the averaged run's constant lr for reference."""
    lrs = np.asarray(lrs)
    fig, ax = _axes(title or "Equivalent learning-rate schedule", "step", "learning rate")
    ax.loglog(np.arange(1, lrs.size + 1), lrs, label="equivalent schedule")
    if base_lr is not None:
        ax.axhline(base_lr, color="gray", ls="--", label="averaged run's lr")
    ax.legend()
    return fig


def plot_two_point_gain(result: Mapping) -> Figure:
    """Excess loss of the two-point average against the gap, with SGD at lr and at lr / 2."""
    fig, ax = _axes("Two-point averaging vs gap", "gap k (steps)", "stationary excess loss")
    ax.semilogx(result["gaps"], result["excess_loss"], "o-", label="two-point average")
    ax.axhline(result["sgd_excess_loss"], color="C1", ls="--", label="SGD at lr")
    ax.axhline(result["half_lr_excess_loss"], color="C2", ls=":", label="SGD at lr / 2")
    ax.legend()
    return fig


def plot_best_ema_decay(result: Mapping) -> Figure:
    """Excess loss at the horizon against 1 - decay, marking the best decay."""
    fig, ax = _axes("EMA decay for a horizon", "1 - decay", "excess loss at horizon")
    ax.loglog(1.0 - np.asarray(result["decays"]), result["excess_loss"], "o-", label="EMA")
    ax.axvline(
        1.0 - result["best_decay"], color="C3", ls="--", label=f"best decay {result['best_decay']:.5f}"
    )
    ax.axhline(result["sgd_excess_loss"], color="C1", ls=":", label="last iterate")
    ax.legend()
    return fig


def plot_ema_vs_reduced_lr(result: Mapping) -> Figure:
    """Excess loss over time: EMA of the run, the run, and SGD at the reduced and matched lrs."""
    fig, ax = _axes("EMA vs reduced learning rate", "step", "expected excess loss")
    ax.semilogy(result["steps"], result["sgd"], label="SGD at lr")
    ax.semilogy(result["steps"], result["ema"], label="EMA")
    ax.semilogy(
        result["steps"], result["reduced_lr_curve"], ls="--", label=f"lr {result['reduced_lr']:.3g} (paper)"
    )
    ax.semilogy(
        result["steps"], result["matched_lr_curve"], ls=":", label=f"lr {result['matched_lr']:.3g} (matched)"
    )
    ax.legend()
    return fig


def plot_swa_vs_cooldown(result: Mapping) -> Figure:
    """Excess loss over time: SWA from start_step vs a 1/t cooldown from the same step."""
    fig, ax = _axes("SWA vs 1/t cooldown", "step", "expected excess loss")
    ax.semilogy(result["steps"], result["sgd"], label="SGD at lr")
    ax.semilogy(result["steps"], result["swa"], label="SWA")
    ax.semilogy(result["steps"], result["cooldown"], ls="--", label="1/t cooldown")
    ax.axvline(result["start_step"], color="gray", lw=0.8)
    ax.legend()
    return fig


def plot_agreement(
    closed_form: ArrayLike, simulated: ArrayLike, standard_error: ArrayLike, label: str = ""
) -> Figure:
    """Simulated against closed-form values per direction, with 2-standard-error bars."""
    fig, ax = _axes(label or "Closed form vs simulation", "closed form", "simulation")
    closed = np.asarray(closed_form)
    ax.errorbar(closed, simulated, yerr=2 * np.asarray(standard_error), fmt=".", ms=3, alpha=0.6)
    lims = [closed.min(), closed.max()]
    ax.plot(lims, lims, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    return fig
