"""Claims A (fixed-batch line search) and B (a used batch is remembered), from the recorded base runs.

A: at several snapshots theta_s of each base run, f_B(lr) = L_B(theta_s - lr g_B) for the batch B_{s+1}
that training uses next (train-mode BN, the plain gradient g_B without weight decay), on an adaptive lr
grid; a parabola is fitted on [0, 2 lr*]; a held-out batch (augmented test images) is evaluated along the
same line. h = 1 / lr* (the median over the plateau snapshots) is the curvature estimate claims B and F use.

B: the loss matrix of batches used shortly before a snapshot, batches used only later (the "not yet
seen recently" baseline) and held-out batches, at the snapshots that follow.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn.functional as F

from trajlab.config import HostSettings
from trajlab.experiments.claims import common
from trajlab.experiments.claims.base_runs import prepare_base_runs
from trajlab.experiments.claims.budgets import Budget, base_spec, budget_lr
from trajlab.runs import RecordedRun

log = logging.getLogger(__name__)

# Claim A thresholds (paper.md section 5): R^2 >= 0.9 on [0, 2 lr*], f(lr*) <= 20% of f(0), lr* "much
# larger" than the training lr (we ask >= 5x), and the held-out batch improves at most half as much.
A_R2, A_ONE_STEP, A_LR_RATIO, A_CONTROL = 0.9, 0.2, 5.0, 0.5


def line_steps(stored: Sequence[int], count: int) -> list[int]:
    """``count`` snapshot steps spread evenly over the run (step 0 and the last step excluded)."""
    inner = [s for s in stored if 0 < s < stored[-1]]
    if len(inner) <= count:
        return inner
    idx = np.unique(np.round(np.linspace(0, len(inner) - 1, count)).astype(int))
    return [inner[i] for i in idx]


def _profile_run(run_dir: Path, budget: Budget, host: HostSettings | None = None) -> list[dict[str, Any]]:
    from trajlab.probes import line_profile

    run = RecordedRun(run_dir, bn_batches=budget.recal_batches, host=host)
    heldout = run.heldout_batches(1)[0]
    rows = []
    for step in line_steps(run.steps(), budget.line_checkpoints):
        model = run.load_weights(step)
        p = line_profile(
            model,
            F.cross_entropy,
            run.batch(step + 1),
            eval_batches={"heldout": heldout},
            bn="batch",
            num_points=budget.line_points,
            hvp=False,
        )
        control = p.control_losses["heldout"]
        rows.append(
            {
                "step": step,
                "lr_star": p.lr_star,
                "r2": p.r2,
                "one_step_fraction": p.one_step_fraction,
                "loss_at_zero": p.loss_at_zero,
                "control_ratio_at_lr_star": p.control_at_lr_star["heldout"],
                "control_rises": bool(control[-1] > control[0]),
                "bracketed": p.bracketed,
                "lrs": list(p.lrs),
                "losses": list(p.losses),
                "control_losses": list(control),
            }
        )
    return rows


def a_verdict(rows: Sequence[dict[str, Any]], lr: float) -> dict[str, Any]:
    """Claim A's verdict from line-profile rows (medians over checkpoints and seeds)."""
    if len(rows) < 3:
        return common.verdict({"enough checkpoints": None}, "needs >= 3 line profiles", n=len(rows))
    med = {k: float(np.nanmedian([r[k] for r in rows])) for k in ("r2", "one_step_fraction", "lr_star")}
    control_gain = float(np.nanmedian([1 - r["control_ratio_at_lr_star"] for r in rows]))
    train_gain = 1 - med["one_step_fraction"]
    bracketed = float(np.mean([r["bracketed"] for r in rows]))
    checks = {
        f"median R^2 >= {A_R2}": med["r2"] >= A_R2,
        f"median f(lr*)/f(0) <= {A_ONE_STEP}": med["one_step_fraction"] <= A_ONE_STEP,
        f"median lr*/lr >= {A_LR_RATIO}": med["lr_star"] / lr >= A_LR_RATIO,
        f"held-out gain <= {A_CONTROL} x train gain": control_gain <= A_CONTROL * train_gain,
        "most profiles bracketed": True if bracketed >= 0.5 else None,
    }
    out = common.verdict(checks, "all of: " + "; ".join(checks), n=len(rows), required_n=3)
    out["medians"] = {**med, "lr_star_over_lr": med["lr_star"] / lr, "heldout_relative_gain": control_gain}
    out["fraction_meeting_r2_and_one_step"] = float(
        np.mean([r["r2"] >= A_R2 and r["one_step_fraction"] <= A_ONE_STEP for r in rows])
    )
    return out


def curvature_from_rows(rows_by_seed: dict[int, list[dict[str, Any]]], from_step: int) -> dict[str, float]:
    """h = 1 / median lr* over the profiles at steps >= ``from_step`` (all seeds pooled)."""
    stars = [r["lr_star"] for rows in rows_by_seed.values() for r in rows if r["step"] >= from_step]
    if not stars:
        stars = [r["lr_star"] for rows in rows_by_seed.values() for r in rows]
    lr_star = float(np.median(stars))
    return {"lr_star": lr_star, "h": 1.0 / lr_star, "n": len(stars), "from_step": from_step}


def run_claim_A(
    out_dir: str | Path,
    *,
    budget: str = "small",
    seeds: Sequence[int] = (0, 1, 2),
    reuse: bool = True,
    jobs: int = 1,
    progress: bool = True,
    host: HostSettings | None = None,
) -> dict[str, Any]:
    """Claim A: fixed-batch line search along SGD trajectories (see the module docstring).

    Writes ``claim_A.json`` (every profile, medians, h = 1/lr*, verdict) and ``claim_A.png``.
    """
    b, out_dir, window = prepare_base_runs(
        out_dir, budget, seeds, reuse=reuse, jobs=jobs, progress=progress, host=host
    )
    rows = {s: _profile_run(base_spec(b, s).run_dir(out_dir), b, host) for s in seeds}
    lr = budget_lr(b)
    flat = [r for rs in rows.values() for r in rs]
    doc = {
        "budget": budget,
        "lr": lr,
        "profiles": rows,
        "curvature": curvature_from_rows(rows, window.branch_step),
        "window": window.to_dict(),
        "verdict": a_verdict(flat, lr),
        "config": base_spec(b, seeds[0]).config().to_dict(),
        "figures": [_plot_a(out_dir, rows, lr)],
        "protocol": "f(lr) = L_B(theta_s - lr g_B), B = the batch of step s+1, train-mode BN, no weight "
        "decay in the direction; parabola fitted on [0, 2 lr*]; control = an augmented test batch",
    }
    return common.write_result(out_dir, "A", doc, seeds)


def _plot_a(out_dir: Path, rows: dict[int, list[dict[str, Any]]], lr: float) -> str:
    fig, (ax, ax2) = common.new_figure(2)
    seed = next(iter(rows))
    for r in rows[seed]:
        (line,) = ax.plot(r["lrs"], r["losses"], marker=".", label=f"step {r['step']}")
        ax.plot(r["lrs"], r["control_losses"], ls="--", color=line.get_color())
    ax.set_xscale("symlog", linthresh=lr)
    ax.set_xlabel("step size lr along -g_B")
    ax.set_ylabel("loss (solid: batch B, dashed: held-out)")
    ax.set_title(f"seed {seed}: f_B(lr) at several checkpoints")
    ax.legend(fontsize=7)
    for s, rs in rows.items():
        ax2.plot([r["step"] for r in rs], [r["lr_star"] / lr for r in rs], marker="o", label=f"seed {s}")
    ax2.set_xlabel("training step")
    ax2.set_ylabel("lr* / lr")
    ax2.set_yscale("log")
    ax2.legend(fontsize=7)
    return common.save_figure(fig, out_dir / "claim_A.png")


# ------------------------------------------------------------------------------------------ claim B


def _memory_run(
    run_dir: Path, budget: Budget, anchors: Sequence[int], horizon: int, host: HostSettings | None = None
) -> dict[str, Any]:
    from trajlab.probes import batch_memory, loss_matrix

    run = RecordedRun(run_dir, bn_batches=budget.recal_batches, host=host)
    stored = run.steps()
    last = stored[-1]
    used, future, cols = {}, {}, set()
    for a in anchors:
        span = [s for s in stored if a <= s <= a + horizon]
        cols.update(span)
        for j in budget.memory_offsets:
            if a - j >= 1:
                used[f"used_{a - j}"] = a - j
        after = max(span) + 1
        for i in range(budget.future_batches):
            if after + i <= last:
                future[f"future_{after + i}"] = after + i
    heldout = {f"heldout_{i}": hb for i, hb in enumerate(run.heldout_batches(budget.heldout_batches))}
    steps = sorted(cols)
    matrix = loss_matrix(run, {**used, **future, **heldout}, steps, lambda: run.model, bn="batch")
    arr = matrix.array()
    names = list(matrix.names)
    # Future batches at checkpoints before their use: the baseline of a training batch not used lately.
    fut_vals = [
        float(arr[names.index(n), j]) for n, u in future.items() for j, s in enumerate(steps) if s < u
    ]
    fut_base = float(np.mean(fut_vals)) if fut_vals else math.nan
    held = float(arr[[names.index(n) for n in heldout]].mean())
    mem = batch_memory(matrix)
    by_k: dict[int, list[float]] = {}
    for n, u in used.items():
        i = names.index(n)
        for j, s in enumerate(steps):
            if s >= u:
                by_k.setdefault(s - u, []).append(float(arr[i, j]))
    ks = sorted(by_k)
    return {
        "anchors": list(anchors),
        "steps": steps,
        "k": ks,
        "used_loss": [float(np.mean(by_k[k])) for k in ks],
        "future_loss_mean": fut_base,
        "heldout_loss_mean": held,
        "batch_memory": mem.to_dict(),
    }


def _half_life(ks: Sequence[int], excess: Sequence[float]) -> float:
    """First k (linearly interpolated) where ``excess`` drops to half its k = 0 value; nan if never."""
    if not ks or ks[0] != 0 or not excess[0] > 0:
        return math.nan
    half = excess[0] / 2
    for (k0, e0), (k1, e1) in zip(zip(ks, excess), zip(ks[1:], excess[1:])):
        if e1 <= half:
            return float(k0 + (k1 - k0) * (e0 - half) / (e0 - e1)) if e0 != e1 else float(k1)
    return math.nan


def b_verdict(per_seed: dict[int, dict[str, Any]], predicted_tau: float) -> dict[str, Any]:
    """Claim B's verdict: the just-used batch beats held-out and not-recently-used batches, and its
    advantage decays (half of it gone within the measured horizon) in every seed."""
    gap_heldout, gap_future, decays, half_lives = [], [], [], []
    for r in per_seed.values():
        k0 = r["used_loss"][0] if r["k"] and r["k"][0] == 0 else math.nan
        gap_heldout.append(r["heldout_loss_mean"] - k0)
        excess = [r["future_loss_mean"] - v for v in r["used_loss"]]
        gap_future.append(excess[0] if r["k"] and r["k"][0] == 0 else math.nan)
        hl = _half_life(r["k"], excess)
        half_lives.append(hl)
        decays.append(math.isfinite(hl))
    checks = {
        "used batch (k=0) below held-out batches in every seed": all(g > 0 for g in gap_heldout),
        "used batch (k=0) below not-recently-used training batches in every seed": all(
            g > 0 for g in gap_future
        ),
        "advantage over not-recently-used batches halves within the horizon in every seed": all(decays),
    }
    out = common.verdict(checks, "all of: " + "; ".join(checks), n=len(per_seed), required_n=1)
    hl = common.mean_std(half_lives)
    out.update(
        {
            "advantage_over_heldout_k0": common.mean_std(gap_heldout),
            "advantage_over_future_k0": common.mean_std(gap_future),
            "half_life_steps": hl,
            "predicted_time_constant_steps": predicted_tau,
            "predicted_half_life_steps": predicted_tau * math.log(2),
            "half_life_over_prediction": hl["mean"] / (predicted_tau * math.log(2))
            if predicted_tau > 0
            else math.nan,
        }
    )
    return out


def run_claim_B(
    out_dir: str | Path,
    *,
    budget: str = "small",
    seeds: Sequence[int] = (0, 1, 2),
    reuse: bool = True,
    jobs: int = 1,
    progress: bool = True,
    host: HostSettings | None = None,
) -> dict[str, Any]:
    """Claim B: the loss of a batch just used is lower than that of unseen batches, and the gap decays.

    The [I] time constant is compared with lambda*/eta_eff = lr* (1 - momentum) / lr (lr* from claim A).
    Writes ``claim_B.json`` and ``claim_B.png``.
    """
    b, out_dir, window = prepare_base_runs(
        out_dir, budget, seeds, reuse=reuse, jobs=jobs, progress=progress, host=host
    )
    curv = curvature_estimate(out_dir, budget, seeds, reuse=reuse, jobs=jobs, progress=progress, host=host)
    cfg = base_spec(b, seeds[0]).config()
    horizon = window.length_steps // 2
    anchors = [window.branch_step, window.branch_step + horizon]
    per_seed = {s: _memory_run(base_spec(b, s).run_dir(out_dir), b, anchors, horizon, host) for s in seeds}
    tau = curv["lr_star"] * (1 - cfg.optim.momentum) / cfg.optim.lr
    doc = {
        "budget": budget,
        "window": window.to_dict(),
        "curvature": curv,
        "per_seed": per_seed,
        "verdict": b_verdict(per_seed, tau),
        "config": cfg.to_dict(),
        "figures": [_plot_b(out_dir, per_seed)],
        "protocol": "loss (train-mode BN) of batches used k steps before a snapshot, vs held-out (augmented "
        "test) batches and vs training batches used only after the snapshots (same augmentation)",
    }
    return common.write_result(out_dir, "B", doc, seeds)


def _plot_b(out_dir: Path, per_seed: dict[int, dict[str, Any]]) -> str:
    fig, (ax,) = common.new_figure(1, width=6)
    for s, r in per_seed.items():
        ks = np.asarray(r["k"], dtype=float)
        (line,) = ax.plot(ks + 1, r["used_loss"], marker=".", label=f"seed {s}: used k steps ago")
        ax.axhline(r["future_loss_mean"], color=line.get_color(), ls="--", lw=0.8)
        ax.axhline(r["heldout_loss_mean"], color=line.get_color(), ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("k + 1 (steps since the batch was used)")
    ax.set_ylabel("batch loss (dashed: not yet used, dotted: held-out)")
    ax.legend(fontsize=7)
    return common.save_figure(fig, out_dir / "claim_B.png")


def curvature_estimate(
    out_dir: str | Path,
    budget: str,
    seeds: Sequence[int],
    *,
    reuse: bool,
    jobs: int = 1,
    progress: bool = True,
    host: HostSettings | None = None,
) -> dict[str, float]:
    """h = 1/lr* from claim A's result file when it matches (budget, seeds), else by running claim A."""
    import json

    path = Path(out_dir) / "claim_A.json"
    if reuse and path.is_file():
        doc = json.loads(path.read_text())
        if doc.get("budget") == budget and doc.get("seeds") == list(seeds):
            return doc["curvature"]
    return run_claim_A(
        out_dir, budget=budget, seeds=seeds, reuse=reuse, jobs=jobs, progress=progress, host=host
    )["curvature"]
