"""The plateau demo's numbers: readings averaged over end times, the lr ladder, and theory beside measurement.

Pure functions on numbers (no training, no files), so that each is tested on synthetic inputs:

* :func:`mean_se` averages a reading over end times (standard error from the scatter);
* :func:`measured_equivalent_lr` places an average's loss (or accuracy) on the measured lr ladder;
* :func:`bracket_check` is claim F's sharp check: the average sits nearer the run at the predicted lr
  than the runs at 2x and 1/2x of it (on a ladder, read by log-lr interpolation);
* :func:`normalised_l1` compares a predicted curve with a measured one;
* :func:`theory_beside_measurement` fits the multi-timescale heavy-ball model twice, each time holding
  out what it then predicts: the EMAs' equivalent lrs from the last iterate, the two-point gains and the
  ladder; the two-point gain curve from the last iterate, the EMAs and the ladder.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from trajlab.theory.measured import ladder_equivalent_lr, predict_from_measurements
from trajlab.theory.measurements import LadderBranch, RunMeasurements
from trajlab.theory.multiscale import fit_timescales

# E: the largest-gap two-point gain counts as "the lr/2 branch's gain" within this fraction of it.
E_HALF_LR_TOLERANCE = 0.35
# The predicted gain curve agrees when its normalised L1 distance to the measured one is at most this.
GAIN_CURVE_TOLERANCE = 0.30
# The predicted equivalent lr agrees within this factor of the measured one.
EQUIVALENT_LR_FACTOR = 2.0
# Levenberg-Marquardt starts per group count (the lowest-cost points of the log-curvature grid): on the
# demo's run 8 starts find the same fit as all of them (C(J + 3, J)) in 40% of the time.
FIT_STARTS = 8


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of readings at several end times (nan SE for fewer than 2)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan
    return float(x.mean()), se


def measured_equivalent_lr(
    rungs: Mapping[float, float], value: float, *, higher_is_better: bool = False
) -> tuple[float, str | None]:
    """The lr at which the measured ladder reaches ``value`` (log-lr interpolation between rungs).

    Args:
        rungs: ``{lr: reading}`` of the constant-lr run (the top rung) and each branch, averaged over the
            same end times as ``value``.
        value: the average's reading (test loss, or accuracy with ``higher_is_better``).
        higher_is_better: the reading is an accuracy (it rises as the lr falls).

    Returns:
        (lr, note): note says when the value lies outside the ladder (extrapolated) or the ladder is not
        monotone.
    """
    lrs = list(rungs)
    sign = -1.0 if higher_is_better else 1.0
    return ladder_equivalent_lr(lrs, [sign * rungs[lr] for lr in lrs], sign * value)


def ladder_reading_at(rungs: Mapping[float, float], lr: float) -> tuple[float, bool]:
    """The ladder's reading at ``lr`` by linear interpolation in log lr; (value, extrapolated)."""
    x = np.log(np.asarray(sorted(rungs), dtype=np.float64))
    y = np.asarray([rungs[r] for r in sorted(rungs)], dtype=np.float64)
    t = math.log(lr)
    if x[0] <= t <= x[-1]:
        return float(np.interp(t, x, y)), False
    i, j = (0, 1) if t < x[0] else (-2, -1)
    return float(y[i] + (t - x[i]) * (y[j] - y[i]) / (x[j] - x[i])), True


def bracket_check(
    average: float, runs: Mapping[str, float], *, extrapolated: Sequence[str] = ()
) -> dict[str, Any]:
    """Claim F, sharply: the average sits nearer the run at the predicted lr than the runs at 2x and 1/2x.

    Args:
        average: the average's reading (e.g. test loss over end times).
        runs: readings of the runs at ``"predicted"``, ``"2x"`` and ``"half"`` the predicted lr.
        extrapolated: which of them were read off the ladder beyond its ends (reported; the check
            still runs).

    Returns:
        ``{"passed", "distance": {name: |average - run|}, "nearest", "extrapolated"}``; passed is None
        when a reading is missing.
    """
    dist = {k: abs(average - runs[k]) if math.isfinite(runs.get(k, math.nan)) else math.nan for k in runs}
    needed = ("predicted", "2x", "half")
    if not math.isfinite(average) or any(not math.isfinite(dist.get(k, math.nan)) for k in needed):
        passed = None
    else:
        passed = dist["predicted"] < dist["2x"] and dist["predicted"] < dist["half"]
    finite = {k: v for k, v in dist.items() if math.isfinite(v)}
    return {
        "passed": passed,
        "distance": dist,
        "nearest": min(finite, key=finite.__getitem__) if finite else None,
        "extrapolated": list(extrapolated),
    }


def normalised_l1(predicted: Sequence[float], measured: Sequence[float]) -> float:
    """sum |predicted - measured| / sum |measured| over the points where both are finite (nan if none)."""
    p, m = np.asarray(predicted, dtype=np.float64), np.asarray(measured, dtype=np.float64)
    ok = np.isfinite(p) & np.isfinite(m)
    den = float(np.abs(m[ok]).sum())
    return float(np.abs(p[ok] - m[ok]).sum() / den) if ok.any() and den > 0 else math.nan


def _ladder(branches: Sequence[Mapping[str, Any]]) -> tuple[LadderBranch, ...]:
    return tuple(
        LadderBranch(float(b["lr"]), np.asarray(b["ages"]), np.asarray(b["losses"])) for b in branches
    )


def theory_beside_measurement(
    *,
    lr: float,
    momentum: float,
    last: tuple[float, float],
    gaps: Sequence[int],
    gains: Sequence[tuple[float, float]],
    ema: Mapping[float, tuple[float, float]],
    branches: Sequence[Mapping[str, Any]],
    end_ages: Sequence[int],
    hessian_top_eigenvalue: float | None = None,
) -> dict[str, Any]:
    """Fit the multi-timescale heavy-ball model (``trajlab.theory``) twice, holding out what it predicts.

    Args:
        lr, momentum: the constant-lr run's lr and heavy-ball momentum.
        last: (mean, SE) of the last iterate's test loss over the end times.
        gaps: two-point gaps k (both points on the plateau).
        gains: (mean, SE) of the test-loss gain L(last) - L(two-point k) per gap.
        ema: ``{decay: (mean, SE)}`` of each EMA's test loss over the end times.
        branches: the ladder, ``{"lr", "ages", "losses"}`` per branch (every evaluation after the branch
            point: the early ages carry the slow timescales).
        end_ages: the branches' ages at the end times (the predicted ladder is read there, like the
            measured one).
        hessian_top_eigenvalue: the training Hessian's largest eigenvalue (bounds every group's curvature).

    Returns:
        ``{"ema_prediction": ..., "gain_prediction": ...}``: each a ``MeasuredPrediction.to_dict()`` with
        ``"fitted_on"``; a fit that fails carries ``"error"`` instead (never a silent number).
    """
    ladder = _ladder(branches)
    decays = sorted(ema)
    common: dict[str, Any] = {"lr": lr, "momentum": momentum, "last_loss": last[0], "ladder": ladder}
    if (
        hessian_top_eigenvalue is not None
        and math.isfinite(hessian_top_eigenvalue)
        and hessian_top_eigenvalue > 0
    ):
        common["hessian_top_eigenvalue"] = hessian_top_eigenvalue
    if math.isfinite(last[1]) and last[1] > 0:
        common["last_loss_se"] = last[1]
    gain_se = [g[1] for g in gains]
    ema_se = [ema[d][1] for d in decays]
    out: dict[str, Any] = {}
    plans = {
        "ema_prediction": (
            "last iterate, two-point gains, lr ladder (the EMAs held out)",
            RunMeasurements(
                **common,
                two_point_gaps=list(gaps),
                two_point_gains=[g[0] for g in gains],
                two_point_gains_se=gain_se if _all_pos(gain_se) else None,
            ),
        ),
        "gain_prediction": (
            "last iterate, EMA losses, lr ladder (the two-point gains held out)",
            RunMeasurements(
                **common,
                ema_decays=decays,
                ema_losses=[ema[d][0] for d in decays],
                ema_losses_se=ema_se if _all_pos(ema_se) else None,
            ),
        ),
    }
    for name, (fitted_on, meas) in plans.items():
        try:
            fitted = fit_timescales(meas, starts=FIT_STARTS)
            pred = predict_from_measurements(
                meas, ema_decays=decays, gaps=list(gaps), ladder_ages=list(end_ages), fit=fitted
            )
            out[name] = {"fitted_on": fitted_on, "fit_starts": FIT_STARTS, **pred.to_dict()}
        except (ValueError, np.linalg.LinAlgError, FloatingPointError) as e:
            out[name] = {"fitted_on": fitted_on, "error": f"the fit failed: {e}"}
    return out


def _all_pos(values: Sequence[float]) -> bool:
    return bool(values) and all(math.isfinite(v) and v > 0 for v in values)
