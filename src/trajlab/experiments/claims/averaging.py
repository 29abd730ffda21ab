"""Claims E (two-point averaging vs gap, vs the lr/2 branch) and F (EMA vs the predicted reduced lr, SWA vs a
1/t cooldown), inside the shared branch window [T_b, T] of the base runs (see ``stationarity.py``).

Every state, the last iterate included, is evaluated with recalibrated BatchNorm; the raw last iterate is
reported too. Two-point averages and SWA are built post hoc from the snapshots (exact averages of the
stored iterates; SWA averages the snapshots, i.e. every ``snapshot spacing`` steps); the EMA is the base
run's online EMA (updated every step, evaluated by the runner with recalibrated BN).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trajlab.config import HostSettings
from trajlab.experiments.claims import common
from trajlab.experiments.claims.base_runs import Window, prepare_base_runs
from trajlab.experiments.claims.budgets import (
    Budget,
    base_spec,
    cooldown_spec,
    lr_half_spec,
    reduced_spec,
)
from trajlab.experiments.claims.cache import ensure_runs
from trajlab.experiments.claims.lines import curvature_estimate
from trajlab.experiments.claims.predictions import predicted_lrs
from trajlab.experiments.plateau_measure import bracket_check
from trajlab.runs import RecordedRun

log = logging.getLogger(__name__)

# E: |two-point(k_max) - lr/2 run| counts as "about equal" within 2 standard errors of the paired
# difference over seeds, or within this absolute accuracy.
E_EQUAL_ACC = 0.003
# F: "tracks" = the mean |difference| to the predicted run is at most this fraction of the mean
# |difference| to the constant-lr run (the curve the average departs from).
F_TRACK_FRACTION = 0.5
# F, sharply: the EMA must also sit nearer the run at the predicted lr than runs at these multiples of it
# (a run at lr/10 might otherwise match just as well as one at the predicted lr/175).
F_BRACKET = {"2x": 2.0, "half": 0.5}


def _spacing(stored: Sequence[int]) -> int:
    diffs = np.diff(np.asarray(stored))
    return int(np.bincount(diffs).argmax()) if diffs.size else 1


def usable_gaps(gaps: Sequence[int], window_steps: int, spacing: int) -> list[int]:
    """Gaps that stay inside the window and are multiples of the snapshot spacing."""
    return [k for k in gaps if k <= window_steps and k % spacing == 0]


def _e_seed(
    out_dir: Path, b: Budget, seed: int, window: Window, host: HostSettings | None = None
) -> dict[str, Any]:
    from trajlab.averaging import TwoPoint, post_hoc_many

    base_dir = base_spec(b, seed).run_dir(out_dir)
    half_dir = lr_half_spec(b, seed, window.branch_step).run_dir(out_dir)
    run = RecordedRun(base_dir, bn_batches=b.recal_batches, host=host)
    t, every = window.end_step, _spacing(run.steps())
    gaps = usable_gaps(b.gaps_steps, window.length_steps, every)
    rules = [TwoPoint(k) for k in gaps]
    bn_names = [n for n, x in run.model.named_buffers() if x.is_floating_point()]
    avgs = post_hoc_many(run, rules, [t], every, buffer_names=bn_names)
    last = run.load(t)
    half_last = RecordedRun(half_dir, host=host).load(t)
    out: dict[str, Any] = {
        "last_raw": run.evaluate(last, "raw").to_dict(),
        "last_recal": run.evaluate(last).to_dict(),
        "lr_half_raw": run.evaluate(half_last, "raw").to_dict(),
        "lr_half_recal": run.evaluate(half_last).to_dict(),
        "two_point": {k: run.evaluate(avgs[(r.name, t)]).to_dict() for k, r in zip(gaps, rules)},
    }
    return out


def e_verdict(per_seed: dict[int, dict[str, Any]], in_plateau: bool) -> dict[str, Any]:
    """Claim E's verdict from per-seed evaluations (accuracy; losses reported alongside)."""
    gaps = sorted({int(k) for r in per_seed.values() for k in r["two_point"]})
    if not gaps:
        return common.verdict({"gaps inside the window": None}, "no usable gap", n=len(per_seed))

    def gain(k: int, metric: str = "acc") -> list[float]:
        sign = 1 if metric == "acc" else -1
        return [sign * (r["two_point"][k][metric] - r["last_recal"][metric]) for r in per_seed.values()]

    kmax, kmin = gaps[-1], gaps[0]
    diff_half = [r["two_point"][kmax]["acc"] - r["lr_half_recal"]["acc"] for r in per_seed.values()]
    d = common.mean_std(diff_half)
    se = d["std"] / math.sqrt(d["n"]) if d["n"] > 1 else math.inf
    g_max = common.mean_std(gain(kmax))
    checks = {
        "gain at the largest gap > 0 (2 SE over seeds)": common.significantly_positive(gain(kmax))
        if g_max["mean"] > 0 or len(per_seed) == 1
        else False,
        "gain grows with k (largest >= smallest gap)": g_max["mean"] >= common.mean_std(gain(kmin))["mean"],
        f"two-point(k_max) ~ lr/2 run (within 2 SE or {E_EQUAL_ACC:.1%})": abs(d["mean"])
        <= max(2 * se, E_EQUAL_ACC)
        if d["n"] > 1
        else None,
    }
    out = common.verdict(
        checks,
        "inside a plateau, then all of: " + "; ".join(checks),
        n=len(per_seed),
        required_n=3,
        preconditions={"window inside a plateau": in_plateau},
    )
    out.update(
        {
            "gaps": gaps,
            "acc_gain_vs_k": {k: common.mean_std(gain(k)) for k in gaps},
            "loss_gain_vs_k": {k: common.mean_std(gain(k, "loss")) for k in gaps},
            "largest_gap": kmax,
            "acc_gain_largest_gap": g_max,
            "lr_half_acc_gain": common.mean_std(
                [r["lr_half_recal"]["acc"] - r["last_recal"]["acc"] for r in per_seed.values()]
            ),
            "two_point_minus_lr_half_acc": d,
            "acc": {
                name: common.mean_std([r[name]["acc"] for r in per_seed.values()])
                for name in ("last_raw", "last_recal", "lr_half_raw", "lr_half_recal")
            }
            | {
                f"two_point_{k}": common.mean_std([r["two_point"][k]["acc"] for r in per_seed.values()])
                for k in gaps
            },
        }
    )
    return out


def run_claim_E(
    out_dir: str | Path,
    *,
    budget: str = "small",
    seeds: Sequence[int] = (0, 1, 2),
    reuse: bool = True,
    jobs: int = 1,
    progress: bool = True,
    host: HostSettings | None = None,
) -> dict[str, Any]:
    """Claim E: 1/2 (theta_T + theta_{T-k}) vs the last iterate by gap k, and vs the lr/2 branch.

    Both are read at the end T of the window; the lr/2 run branches from the base run's checkpoint at
    the window start with identical batches. Writes ``claim_E.json`` and ``claim_E.png``.
    """
    b, out_dir, window = prepare_base_runs(
        out_dir, budget, seeds, reuse=reuse, jobs=jobs, progress=progress, host=host
    )
    ensure_runs(
        out_dir,
        [lr_half_spec(b, s, window.branch_step) for s in seeds],
        jobs=jobs,
        reuse=reuse,
        progress=progress,
    )
    per_seed = {s: _e_seed(out_dir, b, s, window, host) for s in seeds}
    doc = {
        "budget": budget,
        "window": window.to_dict(),
        "per_seed": per_seed,
        "verdict": e_verdict(per_seed, window.in_plateau),
        "config": base_spec(b, seeds[0]).config().to_dict(),
        "protocol": "two-point averages of the base run at the window end T (gaps k <= window length), the "
        "last iterate, and the lr/2 branch at T; all with recalibrated BN (raw last iterates too)",
    }
    doc["figures"] = [_plot_e(out_dir, doc["verdict"])]
    return common.write_result(out_dir, "E", doc, seeds)


def _plot_e(out_dir: Path, v: dict[str, Any]) -> str:
    fig, (ax,) = common.new_figure(1, width=6)
    if "gaps" in v:
        ks = v["gaps"]
        m = [v["acc_gain_vs_k"][k]["mean"] * 100 for k in ks]
        s = [v["acc_gain_vs_k"][k]["std"] * 100 for k in ks]
        ax.errorbar(ks, m, yerr=s, marker="o", capsize=3, label="two-point 1/2(theta_T + theta_T-k)")
        h = v["lr_half_acc_gain"]
        ax.axhspan((h["mean"] - h["std"]) * 100, (h["mean"] + h["std"]) * 100, color="C1", alpha=0.2)
        ax.axhline(h["mean"] * 100, color="C1", label="lr/2 branch (mean +- std)")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xscale("log")
        # Label the measured gaps themselves (log-scale minor labels overlap).
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
    ax.set_xlabel("gap k (steps)")
    ax.set_ylabel("test acc gain over last iterate (points, BN recal.)")
    ax.legend(fontsize=7)
    return common.save_figure(fig, out_dir / "claim_E.png")


# ------------------------------------------------------------------------------------------ claim F


def _track(a: dict[int, float], target: dict[int, float], other: dict[int, float]) -> dict[str, float]:
    steps = sorted(set(a) & set(target) & set(other))
    d_target = float(np.mean([abs(a[s] - target[s]) for s in steps])) if steps else math.nan
    d_other = float(np.mean([abs(a[s] - other[s]) for s in steps])) if steps else math.nan
    return {"steps": steps, "to_predicted": d_target, "to_constant_lr": d_other}


def _f_seed(
    out_dir: Path,
    b: Budget,
    seed: int,
    window: Window,
    pred: dict[str, float],
    host: HostSettings | None = None,
) -> dict[str, Any]:
    from trajlab.averaging import SWA, post_hoc_many

    base_dir = base_spec(b, seed).run_dir(out_dir)
    run = RecordedRun(base_dir, bn_batches=b.recal_batches, host=host)
    red = RecordedRun(
        reduced_spec(b, seed, window.branch_step, pred["reduced_lr"]).run_dir(out_dir), host=host
    )
    cool_dir = cooldown_spec(b, seed, window.branch_step, pred["cooldown_time_scale_steps"]).run_dir(out_dir)
    cool = RecordedRun(cool_dir, host=host)
    ema_name = f"ema_{pred['ema_decay']:g}"
    # Second half of the window: the reduced run has had time to relax towards its own level.
    half = window.branch_step + window.length_steps // 2
    eval_steps = sorted(s for s in common.eval_series(base_dir, f"{ema_name}/test_acc") if s >= half)
    every = _spacing(run.steps())
    swa_steps = [s for s in run.steps() if s > window.branch_step and (s - window.branch_step) % every == 0]
    # Read-outs at (about) a quarter, half, three quarters and the end of the window.
    targets = [window.branch_step + q * window.length_steps / 4 for q in (1, 2, 3, 4)]
    swa_steps = sorted({min(swa_steps, key=lambda s, x=x: abs(s - x)) for x in targets})
    bn_names = [n for n, x in run.model.named_buffers() if x.is_floating_point()]
    swa_rule = SWA(start_step=window.branch_step)
    swa = post_hoc_many(run, [swa_rule], swa_steps, every, buffer_names=bn_names)
    res: dict[str, Any] = {"eval_steps": eval_steps, "swa_steps": swa_steps}
    for metric in ("acc", "loss"):
        ema = common.eval_series(base_dir, f"{ema_name}/test_{metric}")
        live = common.eval_series(base_dir, f"live_recal/test_{metric}")
        res[f"ema_{metric}"] = {s: ema[s] for s in eval_steps}
        res[f"base_recal_{metric}"] = {s: live[s] for s in eval_steps}
    red_eval = {s: run.evaluate(red.load(s)).to_dict() for s in eval_steps}
    bracket = {}
    for name, f in F_BRACKET.items():
        spec = reduced_spec(b, seed, window.branch_step, pred["reduced_lr"] * f, label=f"reduced_{name}")
        other = RecordedRun(spec.run_dir(out_dir), host=host)
        bracket[name] = {s: run.evaluate(other.load(s)).to_dict() for s in eval_steps}
    cool_eval = {s: run.evaluate(cool.load(s)).to_dict() for s in swa_steps}
    swa_eval = {s: run.evaluate(swa[(swa_rule.name, s)]).to_dict() for s in swa_steps}
    base_eval = {s: run.evaluate(s).to_dict() for s in swa_steps}
    for metric in ("acc", "loss"):
        res[f"reduced_{metric}"] = {s: red_eval[s][metric] for s in eval_steps}
        for name, ev in bracket.items():
            res[f"reduced_{name}_{metric}"] = {s: ev[s][metric] for s in eval_steps}
        res[f"swa_{metric}"] = {s: swa_eval[s][metric] for s in swa_steps}
        res[f"cooldown_{metric}"] = {s: cool_eval[s][metric] for s in swa_steps}
        res[f"base_at_swa_{metric}"] = {s: base_eval[s][metric] for s in swa_steps}
        res[f"ema_track_{metric}"] = _track(
            res[f"ema_{metric}"], res[f"reduced_{metric}"], res[f"base_recal_{metric}"]
        )
        res[f"swa_track_{metric}"] = _track(
            res[f"swa_{metric}"], res[f"cooldown_{metric}"], res[f"base_at_swa_{metric}"]
        )
    return res


def f_bracket(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The sharp F check on the test loss over the second half of the window, seeds pooled: the EMA's mean
    reading sits nearer the predicted-lr run's than those of the runs at 2x and 1/2x the predicted lr
    (:func:`~trajlab.experiments.plateau_measure.bracket_check`); ``passed`` None when a run is missing."""

    def pooled(key: str) -> float:
        vals = [v for r in per_seed.values() for v in (r.get(key) or {}).values()]
        return float(np.mean(vals)) if vals else math.nan

    runs = {"predicted": pooled("reduced_loss"), **{n: pooled(f"reduced_{n}_loss") for n in F_BRACKET}}
    return bracket_check(pooled("ema_loss"), runs) | {"readings": runs, "ema": pooled("ema_loss")}


def f_verdict(per_seed: dict[int, dict[str, Any]], in_plateau: bool) -> dict[str, Any]:
    """Claim F's verdict: each average tracks its predicted run (test loss, seeds pooled) more closely
    than ``F_TRACK_FRACTION`` times its distance to the constant-lr run."""
    out: dict[str, Any] = {}
    checks: dict[str, bool | None] = {}
    for avg, label in (("ema", "EMA ~ reduced-lr run"), ("swa", "SWA ~ 1/t cooldown")):
        for metric in ("loss", "acc"):
            to_pred = common.mean_std([r[f"{avg}_track_{metric}"]["to_predicted"] for r in per_seed.values()])
            to_const = common.mean_std(
                [r[f"{avg}_track_{metric}"]["to_constant_lr"] for r in per_seed.values()]
            )
            out[f"{avg}_{metric}_mean_abs_diff"] = {"to_predicted": to_pred, "to_constant_lr": to_const}
        d = out[f"{avg}_loss_mean_abs_diff"]
        checks[f"{label}: |diff| to it <= {F_TRACK_FRACTION} x |diff| to constant lr (test loss)"] = (
            d["to_predicted"]["mean"] <= F_TRACK_FRACTION * d["to_constant_lr"]["mean"]
        )
    out["ema_bracket"] = f_bracket(per_seed)
    checks["EMA nearer the predicted-lr run than runs at 2x and 1/2x of it (test loss)"] = out["ema_bracket"][
        "passed"
    ]
    v = common.verdict(
        checks,
        "inside a plateau, then all of: " + "; ".join(checks),
        n=len(per_seed),
        required_n=3,
        preconditions={"window inside a plateau": in_plateau},
    )
    v.update(out)
    return v


def run_claim_F(
    out_dir: str | Path,
    *,
    budget: str = "small",
    seeds: Sequence[int] = (0, 1, 2),
    reuse: bool = True,
    jobs: int = 1,
    progress: bool = True,
    host: HostSettings | None = None,
) -> dict[str, Any]:
    """Claim F: the EMA tracks a run at the predicted reduced lr; SWA tracks a 1/t cooldown.

    h = 1/lr* comes from claim A (run first if needed). Writes ``claim_F.json`` and ``claim_F.png``.
    """
    b, out_dir, window = prepare_base_runs(
        out_dir, budget, seeds, reuse=reuse, jobs=jobs, progress=progress, host=host
    )
    curv = curvature_estimate(out_dir, budget, seeds, reuse=reuse, jobs=jobs, progress=progress, host=host)
    pred = predicted_lrs(b, curv["h"])
    specs = [reduced_spec(b, s, window.branch_step, pred["reduced_lr"]) for s in seeds] + [
        cooldown_spec(b, s, window.branch_step, pred["cooldown_time_scale_steps"]) for s in seeds
    ]
    specs += [
        reduced_spec(b, s, window.branch_step, pred["reduced_lr"] * f, label=f"reduced_{name}")
        for s in seeds
        for name, f in F_BRACKET.items()
    ]
    ensure_runs(out_dir, specs, jobs=jobs, reuse=reuse, progress=progress, host=host)
    per_seed = {s: _f_seed(out_dir, b, s, window, pred, host) for s in seeds}
    doc = {
        "budget": budget,
        "window": window.to_dict(),
        "curvature": curv,
        "prediction": pred,
        "per_seed": per_seed,
        "verdict": f_verdict(per_seed, window.in_plateau),
        "config": base_spec(b, seeds[0]).config().to_dict(),
        "protocol": "EMA: the base run's online EMA (recalibrated BN) vs a branch at the predicted constant "
        "lr, second half of the window; SWA from the window start (post hoc over snapshots) vs a 1/t "
        "cooldown branch; every state BN-recalibrated; 'constant lr' = the base run's last iterate",
    }
    doc["figures"] = [_plot_f(out_dir, per_seed)]
    return common.write_result(out_dir, "F", doc, seeds)


def _plot_f(out_dir: Path, per_seed: dict[int, dict[str, Any]]) -> str:
    fig, (ax, ax2) = common.new_figure(2)
    for i, (s, r) in enumerate(per_seed.items()):
        c = f"C{i}"
        for key, ls, lab in (
            ("ema", "-", "EMA"),
            ("reduced", "--", "reduced-lr run"),
            ("base_recal", ":", "constant lr"),
        ):
            xs = sorted(r[f"{key}_loss"])
            ax.plot(xs, [r[f"{key}_loss"][x] for x in xs], ls=ls, color=c, marker=".", label=f"s{s} {lab}")
        for key, ls, lab in (
            ("swa", "-", "SWA"),
            ("cooldown", "--", "1/t cooldown"),
            ("base_at_swa", ":", "constant lr"),
        ):
            xs = sorted(r[f"{key}_loss"])
            ax2.plot(xs, [r[f"{key}_loss"][x] for x in xs], ls=ls, color=c, marker=".", label=f"s{s} {lab}")
    for a, t in ((ax, "EMA vs reduced lr"), (ax2, "SWA vs 1/t cooldown")):
        a.set_xlabel("step")
        a.set_ylabel("test loss (BN recalibrated)")
        a.set_title(t)
        a.legend(fontsize=6)
    return common.save_figure(fig, out_dir / "claim_F.png")
