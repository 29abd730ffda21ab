"""Claim H: the noisy quadratic model's closed forms (paper.md section 3, written out again here from the
paper notes, independently of :class:`trajlab.theory.NoisyQuadratic`) against the exact Monte-Carlo
simulator, and the exact averaging -> schedule map.

Model: per direction x_{t+1} = a x_t + eps xi_t, eps = lr h, a = 1 - eps, Var xi = s^2 (no momentum).

* SGD:          v = eps s^2 / (2 - eps)
* two-point k:  v (1 + a^k) / 2
* EMA(beta):    v (1 - beta)(1 + a beta) / ((1 + beta)(1 - a beta))
* SWA window n: ~ s^2 / n for n >> 1/eps (approximate: the sum of the autocovariances is s^2)
* map:          SGD with the schedule of :func:`trajlab.theory.equivalent_schedule` reproduces EMA and
                SWA averages of a constant-lr run exactly on any noise sequence (isotropic H).

A closed form passes when the simulation is within 4 standard errors (batch means) of it; the SWA
approximation also gets 3 / (eps_min n) relative slack; the map must agree to 1e-10.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trajlab.config import HostSettings
from trajlab.experiments.claims import common
from trajlab.experiments.claims.budgets import get_budget

Z = 4.0
CURVATURES = np.array([0.02, 0.1, 0.5, 2.0])
NOISE = np.array([1.0, 2.0, 1.0, 0.5])
LR = 0.4
GAPS = (5, 50, 500)
EMA_DECAY = 0.99
SWA_WINDOW = 2000


def closed_forms(h: np.ndarray, s2: np.ndarray, lr: float) -> dict[str, np.ndarray]:
    """The paper's per-direction stationary variances (no momentum)."""
    eps = lr * h
    a = 1 - eps
    v = eps * s2 / (2 - eps)
    b = EMA_DECAY
    out = {"sgd": v, "ema": v * (1 - b) * (1 + a * b) / ((1 + b) * (1 - a * b)), "swa": s2 / SWA_WINDOW}
    for k in GAPS:
        out[f"two_point_{k}"] = v * (1 + a**k) / 2
    return out


def _check(sim: np.ndarray, se: np.ndarray, formula: np.ndarray, rel_slack: np.ndarray | float = 0.0) -> dict:
    dev = np.abs(sim - formula)
    ok = bool(np.all(dev <= Z * se + rel_slack * np.abs(formula) + 1e-12))
    return {
        "simulated": sim,
        "se": se,
        "formula": formula,
        "max_z": float(np.max(dev / np.maximum(se, 1e-300))),
        "pass": ok,
    }


def map_errors(steps: int, seed: int) -> dict[str, Any]:
    """Max |average - last iterate of the equivalent schedule| for EMA and SWA, and the 1/t shape of SWA's."""
    from trajlab.averaging import EMA, SWA
    from trajlab.theory import equivalent_schedule, sgd_iterates

    rng = np.random.default_rng(seed)
    h, lr, start = 0.5, 0.1, 3.0
    minima = rng.standard_normal((steps, 8))
    x0 = start * np.ones(8)
    run = sgd_iterates(lr, h, minima, x0)
    out = {}
    t0 = steps // 2
    for name, rule in (("ema", EMA(0.95)), ("swa", SWA(start_step=t0))):
        w = np.asarray(rule.weights(steps), dtype=np.float64)
        avg = np.tensordot(w, run[: w.size], axes=1)
        sched = equivalent_schedule(rule, lr, h, steps)
        last = sgd_iterates(sched, h, minima, x0)[-1]
        out[f"{name}_max_abs_error"] = float(np.max(np.abs(avg - last)))
        if name == "swa":
            j = np.arange(t0 + 1, steps + 1)
            # The 1/t shape: lr_t h (tau + t - t0) ~ 1 with tau = 1 / (lr h), i.e. the inverse-time
            # schedule lr / (1 + (t - t0) / tau); it falls below near the end, where the last minima
            # carry little weight in the average of iterates.
            shape = sched[t0:] * h * (1 / (lr * h) + j - t0)
            out["swa_schedule_lr_h_(tau+t-t0)"] = {
                "first": float(shape[0]),
                "middle": float(shape[shape.size // 2]),
                "last": float(shape[-1]),
            }
    return out


def run_claim_H(
    out_dir: str | Path,
    *,
    budget: str = "small",
    seeds: Sequence[int] = (0, 1, 2),
    reuse: bool = True,
    jobs: int = 1,
    progress: bool = True,
    host: HostSettings | None = None,
) -> dict[str, Any]:
    """Claim H: closed forms vs simulation on the noisy quadratic model (seconds; no training runs;
    ``host`` is accepted for the drivers' common signature and unused).

    ``reuse``, ``jobs`` and ``progress`` are accepted for a uniform driver signature. Writes
    ``claim_H.json`` and ``claim_H.png``.
    """
    from trajlab.averaging import EMA, SWA, TwoPoint
    from trajlab.theory import NoisyQuadratic, equivalent_lr, simulate

    b = get_budget(budget)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = NoisyQuadratic(CURVATURES, NOISE, LR)
    rules = {"ema": EMA(EMA_DECAY), "swa": SWA(0, window_steps=SWA_WINDOW)}
    rules |= {f"two_point_{k}": TwoPoint(k) for k in GAPS}
    steps = max(b.nqm_steps, 4 * SWA_WINDOW)
    sim = simulate(model, steps, seeds=b.nqm_seeds, rules=rules, seed=int(seeds[0]), burn_in_steps=SWA_WINDOW)
    forms = closed_forms(CURVATURES, NOISE, LR)
    checks = {"sgd": _check(sim["variance"], sim["variance_se"], forms["sgd"])}
    eps_min = float(LR * CURVATURES.min())
    for name in rules:
        r = sim["rules"][name]
        slack = 3.0 / (eps_min * SWA_WINDOW) if name == "swa" else 0.0
        checks[name] = _check(r["variance"], r["variance_se"], forms[name], slack)
        checks[name]["library_closed_form"] = model.stationary_variance(rules[name])
    maps = map_errors(400, int(seeds[0]))
    # Two-point at a gap >> tau vs SGD at lr/2: exactly lr' h = 2 eps / (4 - eps), i.e. lr/2 to eps/4.
    eps_tp = 0.02
    half = float(equivalent_lr(TwoPoint(5000), eps_tp, 1.0))
    passes = {f"simulated {k} variance matches the formula": v["pass"] for k, v in checks.items()}
    passes["EMA schedule map exact (<= 1e-10)"] = maps["ema_max_abs_error"] <= 1e-10
    passes["SWA schedule map exact (<= 1e-10)"] = maps["swa_max_abs_error"] <= 1e-10
    passes["two-point at gap >> tau: lr' = 2 eps / (4 - eps) / h (~ lr/2)"] = (
        abs(half - 2 * eps_tp / (4 - eps_tp)) <= 1e-6 * half
    )
    doc = {
        "budget": budget,
        "model": {"curvatures": CURVATURES, "noise": NOISE, "lr": LR, "momentum": 0.0},
        "simulation": {
            "steps": steps,
            "seeds": b.nqm_seeds,
            "seed": int(seeds[0]),
            "burn_in_steps": SWA_WINDOW,
        },
        "checks": checks,
        "maps": maps,
        "two_point_large_gap_equivalent_lr_over_half_lr": half / (eps_tp / 2),
        "verdict": common.verdict(passes, "all closed forms within 4 SE of simulation; maps exact", n=1),
        "protocol": __doc__,
    }
    doc["figures"] = [_plot_h(out_dir, checks)]
    return common.write_result(out_dir, "H", doc, seeds)


def _plot_h(out_dir: Path, checks: dict[str, Any]) -> str:
    fig, (ax,) = common.new_figure(1, width=6)
    for i, (name, c) in enumerate(checks.items()):
        ax.errorbar(
            np.asarray(c["formula"]),
            np.asarray(c["simulated"]),
            yerr=Z * np.asarray(c["se"]),
            fmt="o",
            color=f"C{i}",
            label=name,
            capsize=2,
        )
    lims = [
        min(np.min(c["formula"]) for c in checks.values()),
        max(np.max(c["formula"]) for c in checks.values()),
    ]
    ax.plot(lims, lims, "k--", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("closed form (paper notes)")
    ax.set_ylabel("simulated variance (+- 4 SE)")
    ax.legend(fontsize=7)
    return common.save_figure(fig, out_dir / "claim_H.png")
