"""The plateau demo's measurements on its runs and the theory's predictions.

:func:`measure` reads the base run (evaluation rows, snapshots) and the ladder branches (evaluation rows)
into one JSON-ready document; :func:`fit` adds the theory (``plateau_measure.theory_beside_measurement``).
:mod:`~trajlab.experiments.plateau_verdicts` turns the document into the claims table, ``summary.json``
and the printout.

Conventions: gains are decreases of the test loss (positive = better); every reading of a loss or an
accuracy is averaged over end times (``f_end_times`` for the ladder and the EMAs, ``two_point.end_times``
for two-point averages), with the standard error of that mean.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from trajlab.experiments.claims import common
from trajlab.experiments.plateau_measure import (
    mean_se,
    measured_equivalent_lr,
    theory_beside_measurement,
)

# Curves kept for the F plot start this fraction of the ladder's length before the branch point.
_CURVE_LEAD_STEPS_FRACTION = 0.25


def _series(run_dir: Path, key: str) -> dict[int, float]:
    return common.eval_series(run_dir, key)


def _readings(series: Mapping[int, float], steps: list[int]) -> dict[str, float]:
    m, se = mean_se([series[s] for s in steps if s in series])
    return {"mean": m, "se": se, "n": sum(s in series for s in steps)}


def measure(
    run: Any,
    b: Any,
    plateau: dict[str, Any],
    branch_step: int,
    ladder_dirs: Mapping[int, Path],
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """Everything the demo measures on the base run ``run`` (a ``RecordedRun``) and its ladder."""
    cfg = run.config
    lr, mu, total = cfg.optim.lr, cfg.optim.momentum, cfg.train.steps
    base_dir = Path(run.run_dir)
    base = {m: _series(base_dir, f"test_{m}") for m in ("loss", "acc")}
    ema = {d: {m: _series(base_dir, f"ema_{d:g}/test_{m}") for m in ("loss", "acc")} for d in b.ema_decays}
    branches = {d: {m: _series(p, f"test_{m}") for m in ("loss", "acc")} for d, p in ladder_dirs.items()}
    # F end times: the second half of the ladder window (every branch has had time to relax), at the
    # evaluations every run has.
    half = branch_step + (total - branch_step) // 2
    common_steps = set(base["loss"]).intersection(*(set(br["loss"]) for br in branches.values()))
    f_steps = sorted(s for s in common_steps if s >= half)
    doc: dict[str, Any] = {
        "lr": lr,
        "momentum": mu,
        "steps": total,
        "plateau": plateau,
        "branch_step": branch_step,
        "branch_in_plateau": bool(plateau["found"] and plateau["start_step"] <= branch_step),
        "f_end_times": f_steps,
        "config": cfg.to_dict(),
        "seeds": [cfg.train.seed],
    }
    rungs = {m: {lr: _readings(base[m], f_steps)} for m in ("loss", "acc")}
    for d, br in branches.items():
        for m in ("loss", "acc"):
            rungs[m][lr / d] = _readings(br[m], f_steps)
    doc["ladder"] = [
        {"lr": r, "divisor": lr / r, "test_loss": rungs["loss"][r], "test_acc": rungs["acc"][r]}
        for r in sorted(rungs["loss"], reverse=True)
    ]
    doc["ema"] = [_ema_entry(d, ema[d], f_steps, rungs, lr) for d in b.ema_decays]
    lead = int(_CURVE_LEAD_STEPS_FRACTION * (total - branch_step))
    doc["curves"] = {
        "constant_lr": _curve(base["loss"], branch_step - lead),
        **{f"ema_{d:g}": _curve(ema[d]["loss"], branch_step - lead) for d in b.ema_decays},
        **{f"lr/{d}": _curve(br["loss"], branch_step) for d, br in branches.items()},
    }
    doc["theory_ladder"] = [
        {
            "lr": lr / d,
            "ages": [s - branch_step for s in sorted(br["loss"]) if s > branch_step],
            "losses": [br["loss"][s] for s in sorted(br["loss"]) if s > branch_step],
        }
        for d, br in branches.items()
    ]
    doc["two_point"] = _two_point(run, b, plateau, base, branches.get(2), progress)
    doc["hessian_top_eigenvalue"] = _top_eigenvalue(run, total)
    return doc


def _top_eigenvalue(run: Any, step: int, batches: int = 8) -> dict[str, Any]:
    """The training Hessian's top eigenvalue at ``step`` (Lanczos, exact HVPs) on the loss of the last
    ``batches`` training batches: an upper bound on every curvature group of the theory."""
    from trajlab.probes import top_eigenvalues

    steps = [s for s in run.batch_steps if s <= step][-batches:]
    top = top_eigenvalues(
        run.load_weights(step), run.loss_fn, data=[run.batch(s) for s in steps], tol=1e-3, max_iter=60
    )
    return {"value": top.eigenvalues[0], "converged": top.converged[0], "batches": steps, "hvps": top.hvps}


def _curve(series: Mapping[int, float], start: int) -> dict[str, list]:
    steps = [s for s in sorted(series) if s >= start]
    return {"steps": steps, "test_loss": [series[s] for s in steps]}


def _ema_entry(decay: float, ema: dict, f_steps: list[int], rungs: dict, lr: float) -> dict[str, Any]:
    entry: dict[str, Any] = {"decay": decay, "horizon_steps": 1 / (1 - decay)}
    for m in ("loss", "acc"):
        reading = _readings(ema[m], f_steps)
        ladder = {r: v["mean"] for r, v in rungs[m].items()}
        eq, note = measured_equivalent_lr(ladder, reading["mean"], higher_is_better=m == "acc")
        entry[f"test_{m}"] = reading
        entry[f"measured_equivalent_lr_{m}"] = eq
        entry[f"measured_equivalent_lr_{m}_note"] = note
    return entry


def _has_bn(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _two_point(
    run: Any, b: Any, plateau: dict, base: dict, half: dict | None, progress: bool
) -> dict[str, Any]:
    """Test loss/acc of 1/2 (theta_t + theta_{t-k}) minus the last iterate's, per gap, at each end time."""
    from tqdm.auto import tqdm

    bn = "recalibrated" if _has_bn(run.model) else "raw"
    stored = set(run.snapshot_steps)
    ends = [t for t in b.end_times if t in stored]
    gaps = [k for k in b.gaps if all(t - k in stored for t in ends)]
    start = plateau["start_step"] if plateau["found"] else None
    last = {t: run.evaluate(t, bn) for t in ends}
    gain: dict[int, list[float]] = {k: [] for k in gaps}
    acc: dict[int, list[float]] = {k: [] for k in gaps}
    with tqdm(
        total=len(ends) * len(gaps), desc="two-point averages", disable=not progress, leave=False
    ) as bar:
        for t in ends:
            wt = run.load(t)
            for k in gaps:
                wk = run.load(t - k)
                avg = {n: (x + wk[n]) / 2 if x.is_floating_point() else x for n, x in wt.items()}
                ev = run.evaluate(avg, bn)
                gain[k].append(last[t].loss - ev.loss)
                acc[k].append(ev.acc - last[t].acc)
                bar.update()
    out: dict[str, Any] = {
        "end_times": ends,
        "gaps": gaps,
        "bn": bn,
        "gaps_in_plateau": [k for k in gaps if start is not None and min(ends) - k >= start],
        "measured_gain": [mean_se(gain[k])[0] for k in gaps],
        "measured_gain_se": [mean_se(gain[k])[1] for k in gaps],
        "measured_acc_gain": [mean_se(acc[k])[0] for k in gaps],
        "last_iterate_test_loss": mean_se([last[t].loss for t in ends]),
    }
    if half is not None:
        paired = [base["loss"][t] - half["loss"][t] for t in ends if t in half["loss"] and t in base["loss"]]
        out["half_lr_gain"], out["half_lr_gain_se"] = mean_se(paired)
        out["half_lr_acc_gain"] = mean_se(
            [half["acc"][t] - base["acc"][t] for t in ends if t in half["acc"] and t in base["acc"]]
        )[0]
    return out


# ------------------------------------------------------------------------------------------------ theory


def fit(doc: dict[str, Any]) -> dict[str, Any]:
    """The theory's predictions from the document's measurements (each fit holds out what it predicts)."""
    tp = doc["two_point"]
    gaps = tp["gaps_in_plateau"] or tp["gaps"]
    idx = [tp["gaps"].index(k) for k in gaps]
    constant = doc["ladder"][0]["test_loss"]
    theory = theory_beside_measurement(
        lr=doc["lr"],
        momentum=doc["momentum"],
        last=(constant["mean"], constant["se"]),
        gaps=gaps,
        gains=[(tp["measured_gain"][i], tp["measured_gain_se"][i]) for i in idx],
        ema={e["decay"]: (e["test_loss"]["mean"], e["test_loss"]["se"]) for e in doc["ema"]},
        branches=doc["theory_ladder"],
        end_ages=[s - doc["branch_step"] for s in doc["f_end_times"]],
        hessian_top_eigenvalue=(doc.get("hessian_top_eigenvalue") or {}).get("value"),
    )
    theory["gaps"] = gaps
    if not tp["gaps_in_plateau"]:
        theory["note"] = "no plateau was found: every gap was fitted, stationarity is not guaranteed"
    return theory
