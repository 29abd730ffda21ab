"""Claim C: quasi-stationarity at constant lr, and the plateau level against the lr.

The plateau test and the shared branch window live in :mod:`trajlab.experiments.claims.base_runs`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trajlab.config import HostSettings
from trajlab.experiments.claims import common
from trajlab.experiments.claims.base_runs import base_plateau, held_out_plateau, prepare_base_runs
from trajlab.experiments.claims.budgets import base_spec, extension_spec, lr_half_spec, reduced_spec
from trajlab.experiments.claims.cache import ensure_runs
from trajlab.experiments.claims.lines import curvature_estimate
from trajlab.experiments.claims.predictions import predicted_lrs
from trajlab.runs import RecordedRun


def _distance_level(run_dir: Path, start: int, end: int, host: HostSettings | None = None) -> dict[str, Any]:
    """RMS distance of the snapshots in [start, end] from their own mean (parameters only)."""
    import torch

    store = RecordedRun(run_dir, host=host)
    steps = [s for s in store.steps() if start <= s <= end]
    states = [store.load(s) for s in steps]
    keys = [k for k in states[0] if states[0][k].is_floating_point() and "running_" not in k]
    mean = {k: torch.stack([st[k].double() for st in states]).mean(0) for k in keys}
    dist = [float(sum(((st[k].double() - mean[k]) ** 2).sum() for k in keys)) ** 0.5 for st in states]
    return {"steps": steps, "distance": dist, "rms": float(np.sqrt(np.mean(np.square(dist))))}


def c_verdict(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Claim C's verdict: plateau reached (every seed), and plateau loss and spread grow with the lr."""

    def increasing(r: dict[str, Any], key: str) -> bool:
        order = sorted(r["levels"], key=lambda x: x["lr"])
        vals = [x[key] for x in order]
        return all(a < b for a, b in zip(vals, vals[1:]))

    found = [r.get("plateau_extended", r["plateau"])["found"] for r in per_seed.values()]
    checks = {
        "train loss plateaus at constant lr (every seed; extended runs when there are)": True
        if all(found)
        else None,
        "plateau train loss grows with lr (every seed)": all(
            increasing(r, "train_loss") for r in per_seed.values()
        ),
        "distance from the run's mean grows with lr (every seed)": all(
            increasing(r, "distance_rms") for r in per_seed.values()
        ),
    }
    out = common.verdict(checks, "all of: " + "; ".join(checks), n=len(per_seed), required_n=3)
    # Reported, not a check (the claim is about the train loss): does the held-out loss plateau?
    held = [r.get("plateau_held_out") for r in per_seed.values()]
    out["held_out_loss_plateaus_every_seed"] = all(h is not None and h["found"] for h in held)
    out["held_out_plateau_start_steps"] = [h["start_step"] if h and h["found"] else None for h in held]
    lrs = sorted({x["lr"] for r in per_seed.values() for x in r["levels"]})
    for key in ("train_loss", "distance_rms"):
        out[key] = {
            f"{lr:g}": common.mean_std(
                [x[key] for r in per_seed.values() for x in r["levels"] if x["lr"] == lr]
            )
            for lr in lrs
        }
    # Linearity in lr: a least-squares line through the seed means, with its R^2.
    x = np.asarray(lrs)
    y = np.asarray([out["train_loss"][f"{lr:g}"]["mean"] for lr in lrs])
    if x.size >= 3:
        a, c = np.polyfit(x, y, 1)
        r2 = 1 - float(((y - (a * x + c)) ** 2).sum()) / float(((y - y.mean()) ** 2).sum() or np.nan)
        out["train_loss_linear_fit"] = {"slope": float(a), "intercept": float(c), "r2": r2}
    return out


def run_claim_C(
    out_dir: str | Path,
    *,
    budget: str = "small",
    seeds: Sequence[int] = (0, 1, 2),
    reuse: bool = True,
    jobs: int = 1,
    progress: bool = True,
    host: HostSettings | None = None,
) -> dict[str, Any]:
    """Claim C: quasi-stationarity at constant lr, and the plateau level against the lr.

    The plateau of each base run is found from its train loss (:func:`detect_plateau`), also over the
    base run continued to ``extend_to_steps`` when the budget sets it. Levels at three
    constant lrs (the base run, the lr/2 branch and the reduced-lr branch of claim F, all from the same
    checkpoint with identical batches) are measured over the second half of the window: mean train loss
    and the RMS distance of the snapshots from their own mean. Writes ``claim_C.json`` and ``claim_C.png``.
    """
    b, out_dir, window = prepare_base_runs(
        out_dir, budget, seeds, reuse=reuse, jobs=jobs, progress=progress, host=host
    )
    curv = curvature_estimate(out_dir, budget, seeds, reuse=reuse, jobs=jobs, progress=progress, host=host)
    reduced_lr = predicted_lrs(b, curv["h"])["reduced_lr"]
    specs = {
        s: [lr_half_spec(b, s, window.branch_step), reduced_spec(b, s, window.branch_step, reduced_lr)]
        for s in seeds
    }
    extra = [extension_spec(b, s) for s in seeds] if b.extend_to_steps else []
    runs = [x for v in specs.values() for x in v] + extra
    ensure_runs(out_dir, runs, jobs=jobs, reuse=reuse, progress=progress, host=host)
    half = window.branch_step + window.length_steps // 2
    per_seed = {}
    for s in seeds:
        levels = []
        for spec in [base_spec(b, s), *specs[s]]:
            run_dir = spec.run_dir(out_dir)
            rows = [r for r in common.metric_rows(run_dir, "train") if r["step"] > half]
            dist = _distance_level(run_dir, half, window.end_step, host)
            levels.append(
                {
                    "run": spec.name,
                    "lr": spec.config().optim.lr,
                    "train_loss": float(np.mean([r["train_loss"] for r in rows])),
                    "distance_rms": dist["rms"],
                    "distance": dist,
                }
            )
        held = held_out_plateau(out_dir, b, s)
        per_seed[s] = {
            "plateau": base_plateau(out_dir, b, s).to_dict(),
            "plateau_held_out": None if held is None else held.to_dict(),
            "levels": levels,
        }
        if b.extend_to_steps:
            per_seed[s]["plateau_extended"] = base_plateau(out_dir, b, s, extended=True).to_dict()
            per_seed[s]["recalibrated_test_loss"] = {
                **common.eval_series(base_spec(b, s).run_dir(out_dir), "live_recal/test_loss"),
                **common.eval_series(extension_spec(b, s).run_dir(out_dir), "live_recal/test_loss"),
            }
    doc = {
        "budget": budget,
        "window": window.to_dict(),
        "per_seed": per_seed,
        "verdict": c_verdict(per_seed),
        "config": base_spec(b, seeds[0]).config().to_dict(),
        "protocol": "plateau: train-loss window means, drift over [start, end] < 2 SE and < 5% of the level "
        "(base run, and base run + extension); the same test on the recalibrated test loss (reported); "
        "levels over the second half of the window at lr, lr/2 and the reduced lr of claim F",
    }
    doc["figures"] = [_plot_c(out_dir, per_seed)]
    return common.write_result(out_dir, "C", doc, seeds)


def _plot_c(out_dir: Path, per_seed: dict[int, dict[str, Any]]) -> str:
    fig, (ax, ax2) = common.new_figure(2)
    for i, (s, r) in enumerate(per_seed.items()):
        p = r.get("plateau_extended", r["plateau"])
        ax.plot(p["window_ends"], p["window_means"], marker="o", color=f"C{i}", label=f"seed {s}")
        if p["found"]:
            ax.axvline(p["start_step"], color=f"C{i}", ls="--", lw=0.8)
        lv = sorted(r["levels"], key=lambda x: x["lr"])
        ax2.plot(
            [x["lr"] for x in lv], [x["train_loss"] for x in lv], marker="o", color=f"C{i}", label=f"seed {s}"
        )
    ax.set_xlabel("step (window end)")
    ax.set_ylabel("train loss, window mean (dashed: plateau start)")
    ax2.set_xlabel("constant lr")
    ax2.set_ylabel("plateau train loss")
    ax.legend(fontsize=7)
    ax2.legend(fontsize=7)
    return common.save_figure(fig, out_dir / "claim_C.png")
