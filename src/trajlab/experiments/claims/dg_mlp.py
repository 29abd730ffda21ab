"""Claims D and G rerun on the plateau MLP, with the criteria EXPERIMENTS.md's argument asks for (issue 16).

Why a rerun: at the claim budgets D measured the Euclidean weight distance of a BatchNorm ResNet (flat and
scale-invariant directions dominate it) and G compared lr branches that had 400 steps to relax whatever
their lr. Here the network has no BatchNorm (784-100-100-10 ReLU MLP, all 60k Fashion-MNIST images, SGD
lr 0.1, momentum 0.9, wd 5e-4, batch 128) and steps cost about 3 ms, so:

* **D.** As claim D's driver (``trajectories.py``): theta_{T1} (T1 = T2 - offset, with its momentum) is
  replayed on exactly the base run's batches after T2 and compared with the base run; the other pair is
  the base run branched at T2 with another batch order. Beside |Delta| every read-out measures the
  loss-weighted distance 1/2 Delta^T H Delta (H of the training loss on ``eval_images`` training images at
  the base run's theta, an exact HVP) and the held-out logit distance (mean over ``eval_images`` test
  images of |z' - z|^2). Criterion: with the same batches both function-space distances fall (end/start
  < 1) and end below the other-order pair's, in every seed. A control (not judged): theta_{T2} moved
  ``PERTURBATION`` of the way to theta_{T1}, replayed on the same batches: how far a tiny difference grows.
* **G.** The base run branched at T2 at each lr in ``lrs`` for ``lr_steps * lrs[0] / lr`` steps (lr x
  steps fixed: every direction has relaxed by the same factor), cos(g_B, G) of ``align_batches``
  un-augmented batches against the full training gradient at the branch's last ``reads`` snapshots. The
  noisy quadratic model at stationarity: cos^2 = 1 / (1 + N/S) with N/S = c / lr, so N/S from the
  cosines (1/cos^2 - 1) has log-log slope -1 against lr, and the cosine's own slope is the mean of
  1/2 (1 - cos^2) over the range (not 1/2). Criterion: cos rises with the lr in every seed and the mean
  measured slope is within ``G_SLOPE_TOLERANCE`` of the model's slope with c fitted to the same points.
  Reported beside it (not judged): lambda_max of each branch's last snapshot (Lanczos, ``2 eval_images``
  training images) and the N/S slope the model gives if C and H both scale like lambda_max.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trajlab.config import HostSettings
from trajlab.experiments.claims import common
from trajlab.experiments.claims.alignment import _alignment, loglog_slope
from trajlab.experiments.claims.amap import SYNTHETIC
from trajlab.experiments.claims.cache import RunSpec, ensure_runs
from trajlab.experiments.claims.trajectories import _param_distance, _replay_from
from trajlab.probes import top_eigenvalues
from trajlab.runs import RecordedRun

log = logging.getLogger(__name__)

MLP = "fashion-mlp"
G_SLOPE_TOLERANCE = 0.1
# D's control pair starts this fraction of the way from theta_{T2} to theta_{T1}.
PERTURBATION = 1e-4
DG_BUDGETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "data": "synthetic",
        "base_steps": 60,
        "t2": 40,
        "offset": 10,
        "pair_steps": 20,
        "every": 5,
        "lrs": (0.1, 0.05),
        "lr_steps": 20,
        "reads": 2,
        "eval_images": 256,
        "align_batches": 4,
    },
    "small": {
        "data": "fashion-mnist",
        "base_steps": 6000,
        "t2": 5000,
        "offset": 100,
        "pair_steps": 1000,
        "every": 50,
        "lrs": (0.1, 0.05, 0.025, 0.0125),
        "lr_steps": 2000,
        "reads": 3,
        "eval_images": 2048,
        "align_batches": 32,
    },
}


def _common(b: dict[str, Any], steps: int, every: int, checkpoint_every: int) -> tuple[str, ...]:
    data = SYNTHETIC if b["data"] == "synthetic" else ()
    return (
        *data,
        "record.enabled=true",
        "train.progress=false",
        f"train.steps={steps}",
        f"record.snapshots={{every_steps = {every}}}",
        f"record.checkpoint_every_steps={checkpoint_every}",
        "record.keep_checkpoints=100000",
        f"train.eval_every_steps={10 * steps}",
    )


def specs(b: dict[str, Any], seed: int) -> dict[str, Any]:
    """``{"base", "reorder", "lrs": {lr: spec}}`` of one seed."""
    base = RunSpec(
        f"dg-base-s{seed}", MLP, (*_common(b, b["base_steps"], b["every"], b["offset"]), f"train.seed={seed}")
    )
    t2 = b["t2"]
    reorder = RunSpec(
        f"dg-reorder-s{seed}",
        MLP,
        (*_common(b, t2 + b["pair_steps"], b["every"], b["pair_steps"]), f"train.seed={seed + 1000}"),
        (base, t2),
    )
    lrs = {}
    for lr in b["lrs"]:
        n = round(b["lr_steps"] * b["lrs"][0] / lr)
        over = (
            *_common(b, t2 + n, max(1, n // 10), max(1, n // 4)),
            f"train.seed={seed}",
            f"optim.lr={lr:g}",
        )
        lrs[lr] = RunSpec(f"dg-lr{lr:g}-s{seed}", MLP, over, (base, t2))
    return {"base": base, "reorder": reorder, "lrs": lrs}


def _fixed_batch(ds: Any, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    from trajlab.data import make_batch

    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[: min(count, len(ds))]
    return make_batch(ds, idx, aug_seed=None)


def function_distances(
    model: torch.nn.Module,
    other: dict[str, torch.Tensor],
    train_batch: Any,
    test_batch: Any,
) -> dict[str, float]:
    """Between ``model``'s weights (theta) and the state dict ``other`` (theta'): |Delta| (parameters),
    1/2 Delta^T H Delta (H of the loss of ``train_batch`` at theta) and the mean |z' - z|^2 of the
    logits on ``test_batch``."""
    from trajlab.probes import curvature_along

    named = dict(model.named_parameters())
    delta = {k: (other[k].to(p.dtype) - p.detach()) for k, p in named.items()}
    norm = math.sqrt(sum(float((d.double() ** 2).sum()) for d in delta.values()))
    quad = 0.0
    if norm > 0:
        quad = 0.5 * curvature_along(model, F.cross_entropy, train_batch, delta).quadratic_form
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.eval()
    with torch.no_grad():
        z = model(test_batch[0])
        model.load_state_dict(other)
        z2 = model(test_batch[0])
        model.load_state_dict(state)
    return {"distance": norm, "quadratic": quad, "logit": float(((z2 - z) ** 2).sum(1).mean())}


def _d_seed(out: Path, b: dict[str, Any], sp: dict[str, Any], host: HostSettings | None) -> dict[str, Any]:
    base_dir = sp["base"].run_dir(out)
    base = RecordedRun(base_dir, host=host)
    t2, t1 = b["t2"], b["t2"] - b["offset"]
    read_at = [s for s in base.steps() if t2 < s <= t2 + b["pair_steps"]]
    replay = _replay_from(base_dir, t1, t2, b["pair_steps"], read_at, host)
    keys = [k for k, _ in base.model.named_parameters()]
    check = _replay_from(base_dir, t2, t2, read_at[0] - t2, [read_at[0]], host)[read_at[0]]
    train_b, test_b = (
        _fixed_batch(base.train_data, b["eval_images"]),
        _fixed_batch(base.test_data, b["eval_images"]),
    )
    other = RecordedRun(sp["reorder"].run_dir(out), host=host)

    def series(states: dict[int, dict[str, torch.Tensor]]) -> dict[str, list[float]]:
        rows = [function_distances(base.load_weights(s), states[s], train_b, test_b) for s in states]
        return {k: [r[k] for r in rows] for k in ("distance", "quadratic", "logit")}

    same = series({t2: base.load(t1), **replay})
    # A control for the floor: the same batches from theta_{T2} moved by PERTURBATION of the way to
    # theta_{T1}; if this pair ends as far apart as the first, the floor is the dynamics' sensitivity.
    th1, th2 = base.load(t1), base.load(t2)
    nudged = {k: v + PERTURBATION * (th1[k] - v) if v.is_floating_point() else v for k, v in th2.items()}
    tiny = _replay_from(base_dir, t2, t2, b["pair_steps"], read_at, host, weights=nudged)
    perturbed = series({t2: nudged, **tiny})
    orders = series({t2: base.load(t2), **{s: other.load(s) for s in read_at if s in set(other.steps())}})
    return {
        "t1": t1,
        "t2": t2,
        "steps": [t2, *read_at],
        "replay_relative_error": _param_distance(check, base.load(read_at[0]), keys)
        / _param_distance(base.load(read_at[0]), {k: torch.zeros_like(v) for k, v in check.items()}, keys),
        "same_batches": same,
        "different_orders": orders,
        "same_batches_perturbed": perturbed,
    }


def d_verdict(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Same batches: 1/2 Delta^T H Delta and the logit distance fall and end below the other-order pair's
    (every seed); |Delta| is reported, not judged."""
    ratio = {
        k: [r["same_batches"][k][-1] / r["same_batches"][k][0] for r in per_seed.values()]
        for k in ("distance", "quadratic", "logit")
    }
    below = {
        k: all(r["same_batches"][k][-1] < r["different_orders"][k][-1] for r in per_seed.values())
        for k in ("quadratic", "logit")
    }
    checks = {
        "same batches: 1/2 Delta^T H Delta falls (end/start < 1, every seed)": all(
            x < 1 for x in ratio["quadratic"]
        ),
        "same batches: held-out logit distance falls (every seed)": all(x < 1 for x in ratio["logit"]),
        "... and both end below the other-order pair's (every seed)": below["quadratic"] and below["logit"],
    }
    out = common.verdict(checks, "all of: " + "; ".join(checks), n=len(per_seed), required_n=2)
    out["end_over_start"] = {k: common.mean_std(v) for k, v in ratio.items()}
    out["replay_relative_error_max"] = max(r["replay_relative_error"] for r in per_seed.values())
    return out


def nqm_cosine_slope(lrs: Sequence[float], cosines: Sequence[float]) -> dict[str, float]:
    """The noisy quadratic model's cos = 1/sqrt(1 + c/lr) fitted to measured cosines (c: geometric mean of
    N/S x lr, N/S = 1/cos^2 - 1): ``{"c", "ns_slope" (measured, model -1), "slope" (model's cos slope)}``."""
    lrs, cos = np.asarray(lrs, float), np.asarray(cosines, float)
    ns = 1.0 / cos**2 - 1.0
    c = float(np.exp(np.mean(np.log(ns * lrs))))
    return {
        "c": c,
        "ns_slope": loglog_slope(lrs, ns),
        "slope": loglog_slope(lrs, 1.0 / np.sqrt(1.0 + c / lrs)),
    }


def _g_seed(out: Path, b: dict[str, Any], sp: dict[str, Any], seed: int, host: HostSettings | None):
    ev = RecordedRun(sp["base"].run_dir(out), host=host)
    points = []
    for lr, spec in sp["lrs"].items():
        run = RecordedRun(spec.run_dir(out), host=host)
        reads = run.steps()[-b["reads"] :]
        reads_out = [_alignment(ev, run.load(s), b["align_batches"], seed) for s in reads]
        cos = [a["cosine_mean"] for a in reads_out]
        last = reads_out[-1]
        top = top_eigenvalues(
            run.load_weights(reads[-1]), F.cross_entropy, _fixed_batch(run.train_data, b["eval_images"] * 2),
            k=1, max_iter=60,
        )  # fmt: skip
        points.append(
            {
                "lr": lr,
                "steps": reads,
                "cosine_mean": float(np.mean(cos)),
                "cosines": cos,
                "lambda_max": float(top.eigenvalues[0]),
                # at the last read: |G|, the full loss, and tr(Sigma) = B_simple |G|^2 (per example)
                "full_grad_norm": last["full_grad_norm"],
                "full_loss": last["full_loss"],
                "trace_noise": last["b_simple"] * last["full_grad_norm"] ** 2,
            }
        )
    lrs, cos = [p["lr"] for p in points], [p["cosine_mean"] for p in points]
    lam_slope = loglog_slope(lrs, [p["lambda_max"] for p in points])
    return {
        "points": points,
        "loglog_slope": loglog_slope(lrs, cos),
        "nqm": nqm_cosine_slope(lrs, cos),
        "lambda_max_slope": lam_slope,
        # With C and H both scaling as lr^a (a = lambda_max's slope): N/S ~ tr C / (lr tr CH) ~ lr^(-1-a).
        "ns_slope_if_curvature_scales": -1.0 - lam_slope,
    }


def g_verdict(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """cos rises with the lr (every seed); mean slope within ``G_SLOPE_TOLERANCE`` of the model's."""
    slopes = common.mean_std([r["loglog_slope"] for r in per_seed.values()])
    model = common.mean_std([r["nqm"]["slope"] for r in per_seed.values()])
    checks = {
        "cos decreases as lr decreases (slope > 0, every seed)": all(
            r["loglog_slope"] > 0 for r in per_seed.values()
        ),
        f"mean slope within {G_SLOPE_TOLERANCE} of the NQM's (cos = 1/sqrt(1 + c/lr))": abs(
            slopes["mean"] - model["mean"]
        )
        <= G_SLOPE_TOLERANCE,
    }
    out = common.verdict(checks, "all of: " + "; ".join(checks), n=len(per_seed), required_n=2)
    out["loglog_slope"] = slopes
    out["nqm_slope"] = model
    out["ns_slope"] = common.mean_std([r["nqm"]["ns_slope"] for r in per_seed.values()])
    out["lambda_max_slope"] = common.mean_std([r["lambda_max_slope"] for r in per_seed.values()])
    out["ns_slope_if_curvature_scales"] = common.mean_std(
        [r["ns_slope_if_curvature_scales"] for r in per_seed.values()]
    )
    out["old_criterion_slope_in_0.25_1"] = 0.25 <= slopes["mean"] <= 1.0
    return out


def run_claim_dg_mlp(
    out_dir: str | Path,
    *,
    budget: str = "small",
    seeds: Sequence[int] = (0, 1, 2),
    reuse: bool = True,
    jobs: int = 1,
    progress: bool = True,
    host: HostSettings | None = None,
) -> dict[str, Any]:
    """Train and probe; write ``claim_DG-mlp.json`` and ``claim_DG-mlp.png``."""
    if budget not in DG_BUDGETS:
        raise ValueError(f"DG-mlp budgets: {', '.join(DG_BUDGETS)}; got {budget!r}")
    b = DG_BUDGETS[budget]
    out = Path(out_dir)
    sps = {s: specs(b, s) for s in seeds}
    runs = [x for sp in sps.values() for x in (sp["base"], sp["reorder"], *sp["lrs"].values())]
    ensure_runs(out, runs, jobs=jobs, reuse=reuse, progress=progress, host=host)
    d = {s: _d_seed(out, b, sps[s], host) for s in seeds}
    g = {s: _g_seed(out, b, sps[s], s, host) for s in seeds}
    dv, gv = d_verdict(d), g_verdict(g)
    doc = {
        "budget": budget,
        "verdict": {"verdict": f"D {dv['verdict']}; G {gv['verdict']}"},
        "sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in b.items()},
        "protocol": __doc__,
        "D": {"per_seed": d, "verdict": dv},
        "G": {"per_seed": g, "verdict": gv},
        "figures": [_plot(out, d, g)],
    }
    return common.write_result(out, "DG-mlp", doc, seeds)


def _plot(out: Path, d: dict[int, dict[str, Any]], g: dict[int, dict[str, Any]]) -> str:
    fig, (ax1, ax2, ax3) = common.new_figure(3, width=4.5, height=3.6)
    for i, (s, r) in enumerate(d.items()):
        xs = np.asarray(r["steps"]) - r["t2"]
        for key, ls in (("same_batches", "-"), ("different_orders", "--"), ("same_batches_perturbed", ":")):
            if key not in r:
                continue
            ax1.plot(xs, r[key]["quadratic"], ls=ls, color=f"C{i}", label=f"s{s} {key.replace('_', ' ')}")
            ax2.plot(xs, r[key]["logit"], ls=ls, color=f"C{i}")
    ax1.set_ylabel("1/2 Delta^T H Delta")
    ax2.set_ylabel("held-out |z' - z|^2")
    for ax in (ax1, ax2):
        ax.set_xlabel("steps after T2")
        ax.set_yscale("log")
    ax1.legend(fontsize=6)
    for i, (s, r) in enumerate(g.items()):
        lrs = np.asarray([p["lr"] for p in r["points"]])
        ax3.plot(lrs, [p["cosine_mean"] for p in r["points"]], "o", color=f"C{i}", label=f"seed {s}")
        ax3.plot(lrs, 1.0 / np.sqrt(1.0 + r["nqm"]["c"] / lrs), "-", color=f"C{i}", lw=0.8)
    ax3.set_xscale("log")
    ax3.set_yscale("log")
    ax3.set_xlabel("constant lr (branch of lr x steps fixed)")
    ax3.set_ylabel("cos(g_B, G); lines: 1/sqrt(1 + c/lr)")
    ax3.legend(fontsize=7)
    return common.save_figure(fig, out / "claim_DG-mlp.png")
