"""Plots of probe results. Each function takes result dicts (``to_dict()`` output or parsed JSON lines)
and returns a matplotlib ``Figure``; nothing here trains, loads models or touches a GPU.

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot state), so they work under the
Agg backend and in threads; save with ``fig.savefig(path)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure


def plot_line_profile(profile: Mapping, ax_title: str | None = None) -> Figure:
    """Loss vs lr with the fitted parabola, lr* and the control batches (a ``LineProfile.to_dict()``)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    lrs, losses = np.asarray(profile["lrs"]), np.asarray(profile["losses"])
    ax.plot(lrs, losses, "o", ms=3, label="batch loss f(lr)")
    fit = profile["fit"]
    if np.isfinite(fit["a"]):
        x = np.linspace(0, max(fit["lr_max"], lrs.max()), 200)
        ax.plot(
            x,
            fit["a"] * x**2 + fit["b"] * x + fit["c"],
            "-",
            lw=1,
            label=f"parabola on [0, 2 lr*], R²={fit['r2']:.3f}",
        )
    for name, values in profile.get("control_losses", {}).items():
        ax.plot(lrs, values, ".--", lw=0.8, label=f"control {name}")
    ax.axvline(profile["lr_star"], color="k", ls=":", lw=0.8, label=f"lr* = {profile['lr_star']:.3g}")
    ax.set_xlabel("lr (step along -d)")
    ax.set_ylabel("loss")
    ax.set_title(
        ax_title or f"line profile (bn={profile['bn']}, one-step fraction {profile['one_step_fraction']:.3f})"
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_lr_star_over_training(records: Sequence[Mapping]) -> Figure:
    """lr* over training (records with ``step``, ``lr_star``, ``bn`` and optionally ``lr``), log scale."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for bn in sorted({r["bn"] for r in records}):
        rs = sorted((r for r in records if r["bn"] == bn), key=lambda r: r["step"])
        ax.plot([r["step"] for r in rs], [r["lr_star"] for r in rs], "o-", ms=3, label=f"lr* (bn={bn})")
    with_lr = sorted((r for r in records if "lr" in r), key=lambda r: r["step"])
    if with_lr:
        ax.plot([r["step"] for r in with_lr], [r["lr"] for r in with_lr], "k--", lw=0.8, label="training lr")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("lr")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_loss_matrix(matrix: Mapping) -> Figure:
    """Heat map of a ``LossMatrix.to_dict()``: rows are batches, columns checkpoints, x marks the use step."""
    losses = np.asarray(matrix["losses"], dtype=float)  # [K, S]
    steps, names = list(matrix["steps"]), list(matrix["names"])
    fig = Figure(figsize=(max(4, 0.3 * len(steps) + 2), max(3, 0.3 * len(names) + 1.5)))
    ax = fig.add_subplot()
    im = ax.imshow(losses, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=ax, label="loss")
    ax.set_xticks(range(len(steps)), [str(s) for s in steps], rotation=90, fontsize=6)
    ax.set_yticks(range(len(names)), names, fontsize=6)
    for k, used in enumerate(matrix["used_at"]):
        if used is not None and used in steps:
            ax.plot(steps.index(used), k, "rx", ms=5)
    ax.set_xlabel("checkpoint step")
    ax.set_title(f"fixed-batch losses (bn={matrix['bn']})")
    fig.tight_layout()
    return fig


def plot_batch_memory(memory: Mapping) -> Figure:
    """Held-out mean minus used-batch loss against steps since use (a ``BatchMemory.to_dict()``)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    k = np.asarray(memory["steps_since"])
    adv, std = np.asarray(memory["advantage"]), np.asarray(memory["advantage_std"])
    ax.plot(k, adv, "o-", ms=3, label="advantage of the used batch")
    ax.fill_between(k, adv - std, adv + std, alpha=0.2)
    ax.axhline(0, color="k", lw=0.6)
    ax.axvline(0, color="k", ls=":", lw=0.6)
    ax.set_xlabel("steps since the batch was used (negative: before)")
    ax.set_ylabel("held-out loss - batch loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
