"""Identifiability of fitted timescales: profile intervals and the reason strings for undetermined groups."""

from __future__ import annotations

from typing import Any

import numpy as np

from trajlab.theory.heavy_ball import relaxation_steps
from trajlab.theory.measurements import RunMeasurements


def shortest_steps(meas: RunMeasurements) -> float:
    """The shortest gap, lag or branch age measured, in steps (the finest time resolution of the data)."""
    spans = [*meas.two_point_gaps, *(k for k in meas.loss_autocov_lags if k > 0)]
    spans += [*(k for k in meas.weight_autocov_lags if k > 0)]
    spans += [b.ages.min() for b in meas.ladder if b.ages.size]
    return float(min(spans)) if spans else 1.0


def profile_interval(problem: Any, u: np.ndarray, i: int, cost: float, scale: float, bounds) -> tuple:
    """2-sigma profile interval of log h_i: values whose best cost is within 4 chi2/dof of the optimum.

    Scans a coarse grid over the searched range and fine steps (0.3%..100% in log h) around h_i.

    Returns (low, high, hits_low, hits_high) in log curvature; hits_* flag an interval open at a bound.
    """
    grid = np.linspace(bounds[0], bounds[1], 41)
    steps = np.array([0.003, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.45, 0.65, 1.0])
    local = np.clip(u[i] + np.concatenate([-steps, steps]), bounds[0], bounds[1])
    accepted = [u[i]]
    for value in np.concatenate([grid, local]):
        trial = u.copy()
        trial[i] = value
        if float(np.sum(problem.residual(trial) ** 2)) - cost <= 4.0 * scale:
            accepted.append(value)
    low, high = min(accepted), max(accepted)
    # An upper end at the Hessian's top eigenvalue is a measured bound, not an open interval.
    measured_top = problem.meas.hessian_top_eigenvalue is not None
    return low, high, low <= grid[1], high >= grid[-2] and not measured_top


def group_reason(
    i: int, u: np.ndarray, interval: tuple, amp: float, amp_se: float, meas: RunMeasurements
) -> str | None:
    """Why group i is not determined, or None: amplitude at 0, a one-sided or wide profile interval, or an
    amplitude consistent with 0. ``interval`` is ``profile_interval``'s (low, high, open_low, open_high)."""
    if amp <= 0:
        return (
            "amplitude at its bound 0: the data need no loss weight at this timescale, so its curvature is "
            "not determined (the group is shown only to report that)"
        )
    low, high, open_low, open_high = interval
    taus = relaxation_steps(meas.lr, np.exp(np.array([low, u[i], high])), meas.momentum)
    out = []
    if open_low and open_high:
        out.append("curvature not determined: every value in the searched range fits within 2 sigma")
    elif open_high:
        out.append(
            f"only a lower bound on the curvature (h >= {np.exp(low):.3g}, relaxation <= {taus[0]:.3g} "
            f"steps): the shortest gap/age measured ({shortest_steps(meas):.3g} steps) sees the group "
            "fully relaxed (a flat gain curve), so faster dynamics are not resolved"
        )
    elif open_low:
        out.append(
            f"only an upper bound on the curvature (h <= {np.exp(high):.3g}, relaxation >= {taus[2]:.3g} "
            f"steps): slower than the measured horizon of {meas.horizon_steps:.3g} steps resolves"
        )
    elif high - low > 2.0:
        out.append(f"curvature poorly determined: 2-sigma interval [{np.exp(low):.3g}, {np.exp(high):.3g}]")
    if not np.isfinite(amp_se) or amp_se >= amp:
        out.append(f"amplitude not determined: consistent with 0 (A = {amp:.3g} +- {amp_se:.3g})")
    return "; ".join(out) or None
