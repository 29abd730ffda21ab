"""Claim A's map: where does one step along a fixed batch's own gradient reach a very low loss?

Around a base cell (the plateau demo's MLP: 784-100-100-10 ReLU, Fashion-MNIST, SGD lr 0.1, momentum 0.9,
wd 5e-4, batch 128), one factor changes at a time: batch size, learning rate, width, training-set size,
training length, weight decay; a BatchNorm ResNet cell is probed with train-mode and running BN
statistics. Every cell is trained for each seed; at ``probes`` snapshots spread over the run, the batch
of the next step is profiled along its own gradient (claim A's protocol: no weight decay in the
direction) with a held-out test batch as control.

Beside each measured one-step fraction f(lr*)/f(0) stands the noisy quadratic model's prediction. Near
theta the batch loss is L_B* + 1/2 (theta - c_B)^T H (theta - c_B); along g_B with one curvature
h = g_B^T H g_B / |g_B|^2 the best step removes |g_B|^2 / (2 h), so

    predicted f(lr*)/f(0) = 1 - |g_B|^2 / (2 h f(0)),   |g_B|^2 = |G|^2 (1 + N/S),

where G is the mean gradient and N/S = E|g_B - G|^2 / |G|^2 the gradient noise-to-signal ratio (h and the
loss level f(0) change with the cell too; docs/theory.md §14). N/S and |G|^2 are measured per probe from
max(``noise_batches``, ``noise_images`` / batch size) other training batches, in train mode; the second
prediction puts |G|^2 (1 + N/S) in place of the probed batch's own |g_B|^2.
"""

from __future__ import annotations

import copy
import logging
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from trajlab.config import HostSettings
from trajlab.experiments.claims import common
from trajlab.experiments.claims.cache import RunSpec, ensure_runs
from trajlab.runs import RecordedRun

log = logging.getLogger(__name__)

MLP = "fashion-mlp"
# Budgets: base steps, probes per run, lr points per profile, images for the mean gradient (at least
# ``noise_batches`` batches of the cell's batch size; 8 batches of 32 left N/S noisy: 2-30 at one cell).
AMAP_BUDGETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "steps": 40,
        "probes": 2,
        "points": 24,
        "noise_batches": 4,
        "noise_images": 0,
        "subset": 256,
        "data": "synthetic",
    },
    "small": {
        "steps": 3000,
        "probes": 3,
        "points": 16,
        "noise_batches": 8,
        "noise_images": 4096,
        "subset": 6000,
        "data": "fashion-mnist",
    },
}
SYNTHETIC = (
    "data.name=synthetic",
    "data.synthetic={n = 2048, n_test = 1024, num_classes = 10, channels = 1, size = 8, seed = 3}",
)


def cells(budget: str) -> dict[str, tuple[tuple[str, ...], str, tuple[str, ...]]]:
    """``{cell: (preset overrides, preset, probe BN modes)}``, one factor changed at a time."""
    b = AMAP_BUDGETS[budget]
    steps = b["steps"]
    common_mlp = (
        "record.enabled=true",
        "train.progress=false",
        f"train.steps={steps}",
        f"record.snapshots={{every_steps = {max(1, steps // 10)}}}",
    )
    bn_net = (
        "record.enabled=true",
        "train.progress=false",
        "model.name=resnet20",
        "model.width=8",
        "data.pad_to=0",
        f"train.steps={max(20, steps // 10)}",
        f"record.snapshots={{every_steps = {max(1, steps // 100)}}}",
        f"data.train_subset={b['subset']}",
    )
    one_factor = {
        "base": (),
        "batch 32": ("train.batch_size=32",),
        # lr 0.1 at batch 32 leaves a network near chance (test acc 17-29%): the linear scaling rule's lr too.
        "batch 32, lr 0.025": ("train.batch_size=32", "optim.lr=0.025"),
        "batch 512": ("train.batch_size=512",),
        "batch 1024": ("train.batch_size=1024",),
        "lr 0.03": ("optim.lr=0.03",),
        "lr 0.2": ("optim.lr=0.2",),
        "lr 0.3": ("optim.lr=0.3",),
        "width 50": ("model.width=50",),
        "width 400": ("model.width=400",),
        "1/10 of the images": (f"data.train_subset={b['subset']}",),
        "short (1/10)": (
            f"train.steps={max(4, steps // 10)}",
            f"record.snapshots={{every_steps = {max(1, steps // 100)}}}",
        ),
        "long (3x)": (
            f"train.steps={3 * steps}",
            f"record.snapshots={{every_steps = {max(1, 3 * steps // 10)}}}",
        ),
        "no weight decay": ("optim.weight_decay=0",),
    }  # fmt: skip
    out = {name: ((*common_mlp, *extra), MLP, ("batch",)) for name, extra in one_factor.items()}
    out["resnet BN"] = (bn_net, MLP, ("batch", "running"))
    if b["data"] == "synthetic":
        out = {k: ((*SYNTHETIC, *v[0]), v[1], v[2]) for k, v in out.items()}
    return out


def predicted_fraction(grad_sq: float, curvature: float, loss0: float) -> float:
    """The noisy quadratic model's f(lr*)/f(0) along g_B: 1 - |g_B|^2 / (2 h f(0)) (nan when h <= 0)."""
    if not (curvature > 0 and loss0 > 0):
        return math.nan
    return 1.0 - grad_sq / (2.0 * curvature * loss0)


def predicted_from_noise(signal: float, noise_to_signal: float, curvature: float, loss0: float) -> float:
    """The same prediction with |g_B|^2 replaced by its expectation |G|^2 (1 + N/S): what the gradient
    noise-to-signal ratio alone says about a typical batch at this theta."""
    return predicted_fraction(signal * (1.0 + noise_to_signal), curvature, loss0)


def _flat_grad(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = batch
    loss = F.cross_entropy(model(x), y)
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])


def noise_to_signal(model: torch.nn.Module, batches: Sequence[Any]) -> tuple[float, float, float]:
    """``(N/S, |G|^2, typical N/S)`` from the gradients of ``batches`` (train-mode BN): G their mean, N/S
    the mean |g_b - G|^2 / |G|^2 with the 1/K bias of the sample mean removed (K = len(batches) >= 2), and
    the typical N/S the median of |g_b - G|^2 / |G|^2 (heavy-tailed gradient norms, as at batch 32, put
    the mean far above what a typical batch carries). ``model`` is not changed: the train-mode forwards
    run on a copy, so BatchNorm's running statistics stay as stored (the running-BN probe reads them)."""
    model = copy.deepcopy(model).train()
    grads = torch.stack([_flat_grad(model, b) for b in batches])
    k = grads.shape[0]
    mean = grads.mean(0)
    spread = ((grads - mean) ** 2).sum(1).mean().item() * k / (k - 1)  # unbiased E|g_b - G|^2
    signal = max(mean.pow(2).sum().item() - spread / k, 1e-30)  # E|mean|^2 = |G|^2 + spread / K
    typical = ((grads - mean) ** 2).sum(1).median().item() * k / (k - 1)
    return spread / signal, signal, typical / signal


# Steepest-descent steps on the probed batch alone, each of length 1/h (h along the current gradient).
CAUCHY_STEPS = (1, 2, 4, 8)


def cauchy_fractions(
    model: torch.nn.Module,
    batch: Any,
    steps: Sequence[int] = CAUCHY_STEPS,
    bn: str = "batch",
    criterion: Any = F.cross_entropy,
) -> dict[int, float]:
    """``{k: f_k / f_0}``: the batch loss after k steps along the batch's own current gradient, each of the
    local quadratic model's length |g|^2 / g^T H g (exact HVP), on a copy of ``model`` (BN ``"batch"``:
    train-mode statistics; ``"running"``: eval mode). Whether "very low loss" is a few steps away when one
    step does not reach it; nan from the first step with g^T H g <= 0."""
    m = copy.deepcopy(model).train(bn == "batch")
    x, y = batch
    params = [q for q in m.parameters() if q.requires_grad]
    losses = []
    for t in range(max(steps) + 1):
        loss = criterion(m(x), y)
        losses.append(loss.item())
        if t == max(steps):
            break
        g = torch.autograd.grad(loss, params, create_graph=True)
        gd = [gi.detach() for gi in g]
        hg = torch.autograd.grad(sum((gi * di).sum() for gi, di in zip(g, gd)), params)
        gg = sum(float((d * d).sum()) for d in gd)
        ghg = sum(float((h * d).sum()) for h, d in zip(hg, gd))
        if not ghg > 0:
            break
        with torch.no_grad():
            for q, d in zip(params, gd):
                q.sub_(gg / ghg * d)
    return {k: losses[k] / losses[0] if k < len(losses) and losses[0] > 0 else math.nan for k in steps}


def _probe_cell(run_dir: Path, b: dict[str, Any], bn_modes: Sequence[str], host: HostSettings | None):
    from trajlab.probes import line_profile

    run = RecordedRun(run_dir, host=host)
    heldout = run.heldout_batches(1)[0]
    stored = [s for s in run.steps() if 0 < s < run.steps()[-1]]
    picks = [stored[round(i * (len(stored) - 1) / max(1, b["probes"] - 1))] for i in range(b["probes"])]
    logged = run.batch_steps
    rows = []
    for step in sorted(set(picks)):
        model = run.load_weights(step)
        k = max(b["noise_batches"], b["noise_images"] // run.config.train.batch_size)
        others = [run.batch(s) for s in logged[:: max(1, len(logged) // k)][:k]]
        ns, signal, ns_typical = noise_to_signal(model, others)
        lr = run.lr_at(step + 1)
        for bn in bn_modes:
            p = line_profile(
                model, F.cross_entropy, run.batch(step + 1), eval_batches={"heldout": heldout}, bn=bn,
                num_points=b["points"], hvp=True,
            )  # fmt: skip
            grad_sq = p.grad_norm**2
            control = p.control_at_lr_star.get("heldout", math.nan)
            descent = cauchy_fractions(model, run.batch(step + 1), bn=bn)
            rows.append(
                {
                    "step": step,
                    "bn": bn,
                    "lr": lr,
                    "one_step_fraction": p.one_step_fraction,
                    "predicted_fraction": predicted_fraction(grad_sq, p.curvature_hvp, p.loss_at_zero),
                    "predicted_from_noise": predicted_from_noise(signal, ns, p.curvature_hvp, p.loss_at_zero),
                    "predicted_from_typical_noise": predicted_from_noise(
                        signal, ns_typical, p.curvature_hvp, p.loss_at_zero
                    ),
                    "lr_star_over_lr": p.lr_star / lr if lr > 0 else math.nan,
                    "r2": p.r2,
                    "heldout_fraction": control / p.control_losses["heldout"][0]
                    if p.control_losses["heldout"][0] > 0
                    else math.nan,
                    "noise_to_signal": ns,
                    "noise_to_signal_typical": ns_typical,
                    "grad_sq_over_mean_grad_sq": grad_sq / signal,
                    "loss_at_zero": p.loss_at_zero,
                    "bracketed": p.bracketed,
                    **{f"fraction_after_{k}_steps": v for k, v in descent.items()},
                }
            )
    return rows


def _final_test_acc(run_dir: Path) -> float:
    """The run's test accuracy at its last evaluation (nan when it logged none)."""
    series = common.eval_series(run_dir, "test_acc")
    return series[max(series)] if series else math.nan


def _slug(cell: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in cell).strip("_")


def _median(rows: Sequence[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in rows if math.isfinite(r[key])]
    return statistics.median(values) if values else math.nan


def run_claim_amap(
    out_dir: str | Path,
    *,
    budget: str = "small",
    seeds: Sequence[int] = (0, 1),
    reuse: bool = True,
    jobs: int = 1,
    progress: bool = True,
    host: HostSettings | None = None,
) -> dict[str, Any]:
    """Train every cell for every seed, probe, and write ``claim_A-map.json`` and ``claim_A-map.png``."""
    if budget not in AMAP_BUDGETS:
        raise ValueError(f"A-map budgets: {', '.join(AMAP_BUDGETS)}; got {budget!r}")
    b = AMAP_BUDGETS[budget]
    out_dir = Path(out_dir)
    table = cells(budget)
    specs = {
        (cell, seed): RunSpec(f"amap-{_slug(cell)}-s{seed}", preset, (*over, f"train.seed={seed}"))
        for cell, (over, preset, _) in table.items()
        for seed in seeds
    }
    dirs = ensure_runs(out_dir, list(specs.values()), jobs=jobs, reuse=reuse, progress=progress, host=host)
    per_cell: dict[str, Any] = {}
    for cell, (_, _, bn_modes) in table.items():
        rows = []
        # Whether the cell trained at all (a run that diverged into a dead network has a flat batch loss).
        accs = [_final_test_acc(dirs[specs[(cell, seed)].name]) for seed in seeds]
        for seed in seeds:
            for r in _probe_cell(dirs[specs[(cell, seed)].name], b, bn_modes, host):
                rows.append({"seed": seed, **r})
        for bn in bn_modes:
            # An unbracketed profile (still falling at the largest lr tried) has only a bound on lr*.
            sub = [r for r in rows if r["bn"] == bn and r["bracketed"]]
            unbracketed = sum(1 for r in rows if r["bn"] == bn and not r["bracketed"])
            name = cell if len(bn_modes) == 1 else f"{cell} ({bn} BN)"
            per_cell[name] = {
                "overrides": list(table[cell][0]),
                "n": len(sub),
                "unbracketed": unbracketed,
                "final_test_acc": accs,
                **{
                    k: _median(sub, k)
                    for k in (
                        "one_step_fraction",
                        "predicted_fraction",
                        "predicted_from_noise",
                        "predicted_from_typical_noise",
                        "lr_star_over_lr",
                        "r2",
                        "heldout_fraction",
                        "noise_to_signal",
                        "noise_to_signal_typical",
                        *(f"fraction_after_{k}_steps" for k in CAUCHY_STEPS),
                    )
                },
                "one_step_fraction_range": [
                    min((r["one_step_fraction"] for r in sub), default=math.nan),
                    max((r["one_step_fraction"] for r in sub), default=math.nan),
                ],
                "probes": sub,
            }
    holds = [c for c, v in per_cell.items() if v["one_step_fraction"] <= 0.2]
    doc = {
        "budget": budget,
        "protocol": "f(lr) = L_B(theta_s - lr g_B), B = the batch of step s+1, no weight decay in the "
        "direction, exact curvature; predicted = 1 - |g_B|^2 / (2 h f(0)) (noisy quadratic model, one h "
        "along g_B); predicted_from_noise = the same with |g_B|^2 -> |G|^2 (1 + N/S) (N/S: mean; "
        "_typical: median over batches); N/S and |G|^2 from max(noise_batches, noise_images / batch size) "
        "training batches at the same theta",
        "cells": per_cell,
        "verdict": {
            "verdict": "map",
            "criterion": "a cell 'holds' when its median one-step fraction is <= 0.2 (claim A's threshold)",
            "holds_in": holds,
        },
        "figures": [_plot(out_dir, per_cell)],
    }
    return common.write_result(out_dir, "A-map", doc, seeds)


def _plot(out_dir: Path, per_cell: dict[str, Any]) -> str:
    fig, (ax,) = common.new_figure(width=10.5, height=3.8)
    names = list(per_cell)
    xs = range(len(names))
    ax.scatter(xs, [per_cell[n]["one_step_fraction"] for n in names], label="measured (median)", zorder=3)
    for x, n in zip(xs, names):
        lo, hi = per_cell[n]["one_step_fraction_range"]
        ax.plot([x, x], [lo, hi], color="C0", alpha=0.5)
    ax.scatter(xs, [per_cell[n]["predicted_fraction"] for n in names], marker="x", label="NQM, |g_B|^2")
    ax.scatter(
        xs,
        [per_cell[n]["predicted_from_noise"] for n in names],
        marker="+",
        s=60,
        label="NQM, |G|^2 (1 + N/S)",
    )
    last = f"fraction_after_{CAUCHY_STEPS[-1]}_steps"
    if all(last in per_cell[n] for n in names):
        ax.scatter(
            xs, [per_cell[n][last] for n in names], marker="v", color="C3",
            label=f"measured after {CAUCHY_STEPS[-1]} steps of 1/h (median)",
        )  # fmt: skip
    ax.axhline(0.2, color="grey", lw=0.8, ls="--", label="claim A threshold 0.2")
    ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]), top=1.05)
    ax.set_xticks(list(xs), names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("f(lr*) / f(0)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return common.save_figure(fig, out_dir / "claim_A-map.png")
