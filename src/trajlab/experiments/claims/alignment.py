"""Claim G: the alignment cos(g_B, g_full) of mini-batch gradients with the full-data gradient, at several
constant lrs.

The weights are the last iterates (end of the window) of the base run (lr), its lr/2 branch and its
reduced-lr branch (claim F), all from the same checkpoint with identical batches. Mini-batches are
``align_batches`` random training batches without augmentation, and the full gradient is over the whole
(un-augmented) training subset, so g_B is an unbiased estimate of g_full; BN in train mode (batch
statistics), as in training. The [I] prediction is cos ~ sqrt(lr h / 2), i.e. a log-log slope of 1/2.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn.functional as F

from trajlab.config import HostSettings
from trajlab.experiments.claims import common
from trajlab.experiments.claims.base_runs import prepare_base_runs
from trajlab.experiments.claims.budgets import Budget, base_spec, lr_half_spec, reduced_spec
from trajlab.experiments.claims.cache import ensure_runs
from trajlab.experiments.claims.lines import curvature_estimate
from trajlab.experiments.claims.predictions import predicted_lrs
from trajlab.runs import RecordedRun

log = logging.getLogger(__name__)

# "Roughly proportional to sqrt(lr)": log-log slope of cos against lr in this range.
G_SLOPE_RANGE = (0.25, 1.0)


def _alignment(ev: RecordedRun, state: dict, count: int, seed: int) -> dict[str, Any]:
    from trajlab.data import BatchSampler, iterate_eval, make_batch
    from trajlab.probes import gradient_alignment

    model = ev.load_weights(state)
    sampler = BatchSampler(len(ev.train_data), ev.config.train.batch_size, 7_777 + seed)
    batches = [make_batch(ev.train_data, sampler.indices(i), aug_seed=None) for i in range(1, count + 1)]
    full = iterate_eval(ev.train_data, 512)
    res = gradient_alignment(model, F.cross_entropy, batches, full, bn="batch", noise_scale_hessian=False)
    return {
        "cosine_mean": float(np.mean(res.cosine)),
        "cosine": list(res.cosine),
        "full_grad_norm": res.full_grad_norm,
        "full_loss": res.full_loss,
        "b_simple": res.b_simple,
    }


def loglog_slope(lrs: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of log(values) against log(lrs)."""
    return float(np.polyfit(np.log(lrs), np.log(values), 1)[0])


def g_verdict(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Claim G's verdict: cos falls when the lr is lowered (slope > 0 in every seed) and the mean slope
    lies in ``G_SLOPE_RANGE``."""
    slopes = [r["loglog_slope"] for r in per_seed.values()]
    s = common.mean_std(slopes)
    checks = {
        "cos decreases as lr decreases (slope > 0, every seed)": all(x > 0 for x in slopes),
        f"log-log slope in [{G_SLOPE_RANGE[0]}, {G_SLOPE_RANGE[1]}] (~ sqrt(lr))": G_SLOPE_RANGE[0]
        <= s["mean"]
        <= G_SLOPE_RANGE[1],
    }
    out = common.verdict(checks, "all of: " + "; ".join(checks), n=len(per_seed), required_n=3)
    out["loglog_slope"] = s
    lrs = sorted({x["lr"] for r in per_seed.values() for x in r["points"]})
    out["cosine_by_lr"] = {
        f"{lr:g}": common.mean_std(
            [x["cosine_mean"] for r in per_seed.values() for x in r["points"] if x["lr"] == lr]
        )
        for lr in lrs
    }
    return out


def _g_seed(
    out_dir: Path, b: Budget, seed: int, runs: list[Any], end: int, host: HostSettings | None = None
) -> dict[str, Any]:
    ev = RecordedRun(base_spec(b, seed).run_dir(out_dir), bn_batches=b.recal_batches, host=host)
    points = []
    for spec in runs:
        state = RecordedRun(spec.run_dir(out_dir), host=host).load(end)
        points.append(
            {"run": spec.name, "lr": spec.config().optim.lr, **_alignment(ev, state, b.align_batches, seed)}
        )
    return {
        "points": points,
        "loglog_slope": loglog_slope([p["lr"] for p in points], [p["cosine_mean"] for p in points]),
    }


def run_claim_G(
    out_dir: str | Path,
    *,
    budget: str = "small",
    seeds: Sequence[int] = (0, 1, 2),
    reuse: bool = True,
    jobs: int = 1,
    progress: bool = True,
    host: HostSettings | None = None,
) -> dict[str, Any]:
    """Claim G: gradient alignment against the lr (see the module docstring).

    Writes ``claim_G.json`` and ``claim_G.png``.
    """

    b, out_dir, window = prepare_base_runs(
        out_dir, budget, seeds, reuse=reuse, jobs=jobs, progress=progress, host=host
    )
    curv = curvature_estimate(out_dir, budget, seeds, reuse=reuse, jobs=jobs, progress=progress, host=host)
    reduced_lr = predicted_lrs(b, curv["h"])["reduced_lr"]
    runs = {
        s: [
            base_spec(b, s),
            lr_half_spec(b, s, window.branch_step),
            reduced_spec(b, s, window.branch_step, reduced_lr),
        ]
        for s in seeds
    }
    ensure_runs(
        out_dir, [x for v in runs.values() for x in v], jobs=jobs, reuse=reuse, progress=progress, host=host
    )
    per_seed = {s: _g_seed(out_dir, b, s, runs[s], window.end_step, host) for s in seeds}
    doc = {
        "budget": budget,
        "window": window.to_dict(),
        "per_seed": per_seed,
        "verdict": g_verdict(per_seed),
        "config": base_spec(b, seeds[0]).config().to_dict(),
        "protocol": __doc__,
    }
    doc["figures"] = [_plot_g(out_dir, per_seed)]
    return common.write_result(out_dir, "G", doc, seeds)


def _plot_g(out_dir: Path, per_seed: dict[int, dict[str, Any]]) -> str:
    fig, (ax,) = common.new_figure(1, width=5)
    for i, (s, r) in enumerate(per_seed.items()):
        pts = sorted(r["points"], key=lambda x: x["lr"])
        ax.plot(
            [p["lr"] for p in pts],
            [p["cosine_mean"] for p in pts],
            marker="o",
            color=f"C{i}",
            label=f"seed {s}",
        )
    lrs = np.asarray(sorted({p["lr"] for r in per_seed.values() for p in r["points"]}))
    ref = next(iter(per_seed.values()))["points"][0]
    ax.plot(lrs, ref["cosine_mean"] * np.sqrt(lrs / ref["lr"]), "k--", lw=0.8, label="~ sqrt(lr)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("constant lr")
    ax.set_ylabel("mean cos(g_B, g_full)")
    ax.legend(fontsize=7)
    return common.save_figure(fig, out_dir / "claim_G.png")
