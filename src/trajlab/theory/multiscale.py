"""Fit a few timescales (curvature groups h_j with loss weights A_j) to what a constant-lr run measures.

Variable projection: for given curvatures every measurement is linear in (L_min, A_j >= 0, nuisance
weights >= 0) (``measurements.design``), solved by bounded least squares; the J log-curvatures are fitted
by Levenberg-Marquardt from several starts on a log grid. The number of groups J is chosen by BIC unless
given. Standard errors come from the Gauss-Newton covariance of the full parameter vector, scaled by
chi^2 / dof when that exceeds 1. Nothing undetermined is returned as a silent number: each group, the loss
floor and the fit as a whole carry reason strings when the data cannot fix them. See docs/theory.md sec. 10.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field

import numpy as np

from trajlab.theory._identify import group_reason, profile_interval
from trajlab.theory._solvers import bounded_lstsq, levenberg_marquardt, numerical_jacobian
from trajlab.theory.heavy_ball import relaxation_steps
from trajlab.theory.measurements import (
    Channel,
    RunMeasurements,
    channels,
    design,
    rayleigh_row,
    rayleigh_scale,
)
from trajlab.theory.nqm import NoisyQuadratic
from trajlab.theory.spectrum import from_loss_weights


@dataclass(frozen=True)
class TimescaleGroup:
    """Directions sharing a curvature h (a timescale) with loss weight A; ``reason`` if undetermined.

    ``curvature_se`` is the local (Gauss-Newton) standard error; ``curvature_interval`` the 2-sigma
    profile interval (chi^2 within 4 chi2/dof of the optimum, other curvatures held), which also catches
    curvatures that are only bounded on one side.
    """

    curvature: float
    curvature_se: float
    curvature_interval: tuple[float, float]
    relaxation_steps: float
    amplitude: float
    amplitude_se: float
    reason: str | None = None

    def to_dict(self) -> dict:
        """Plain-python dict (JSON-ready)."""
        return asdict(self)


@dataclass(frozen=True)
class MultiscaleFit:
    """Fitted groups, loss floor L_min, goodness of fit and the covariance of all parameters."""

    lr: float
    momentum: float
    groups: tuple[TimescaleGroup, ...]
    min_loss: float
    min_loss_se: float
    min_loss_reason: str | None
    chi2: float
    dof: int
    channel_chi2: dict
    candidates: tuple[dict, ...]
    reasons: tuple[str, ...]
    param_names: tuple[str, ...] = field(repr=False)
    params: np.ndarray = field(repr=False)
    covariance: np.ndarray = field(repr=False)

    def model(self) -> NoisyQuadratic:
        """The fitted spectrum as a NoisyQuadratic (s_j^2 from A_j); groups with A_j = 0 drop out."""
        h = np.array([g.curvature for g in self.groups])
        a = np.array([g.amplitude for g in self.groups])
        return from_loss_weights(h, a, self.lr, self.momentum)

    def to_dict(self) -> dict:
        """Plain-python dict (JSON-ready); the covariance is given with its parameter names."""
        return {
            "lr": self.lr,
            "momentum": self.momentum,
            "groups": [g.to_dict() for g in self.groups],
            "min_loss": self.min_loss,
            "min_loss_se": self.min_loss_se,
            "min_loss_reason": self.min_loss_reason,
            "chi2": self.chi2,
            "dof": self.dof,
            "channel_chi2": dict(self.channel_chi2),
            "candidates": list(self.candidates),
            "reasons": list(self.reasons),
            "param_names": list(self.param_names),
            "params": self.params.tolist(),
            "covariance": self.covariance.tolist(),
        }


class _Problem:
    """The weighted variable-projection problem for a fixed set of channels and standard errors."""

    def __init__(
        self, meas: RunMeasurements, chans: list[Channel], se: list[np.ndarray], groups: int
    ) -> None:
        self.meas, self.chans, self.groups = meas, chans, groups
        self.y = np.concatenate([c.values for c in chans])
        self.se = np.concatenate(se)
        names = {c.name for c in chans}
        j = groups
        self.columns = np.zeros(1 + 3 * j, dtype=bool)
        self.columns[0] = meas.has_loss_level
        self.columns[1 : 1 + j] = True
        self.columns[1 + j : 1 + 2 * j] = "loss_autocov" in names
        self.columns[1 + 2 * j :] = "weight_autocov" in names
        q = meas.gradient_curvatures
        self.rayleigh = (q.mean(), q.std(ddof=1) / np.sqrt(q.size)) if q.size else None

    def matrix(self, log_h: np.ndarray) -> np.ndarray:
        x, _ = design(self.chans, np.exp(log_h), self.meas.lr, self.meas.momentum)
        return x[:, self.columns] / self.se[:, None]

    def _rayleigh(self, log_h: np.ndarray, theta: np.ndarray) -> np.ndarray | None:
        if self.rayleigh is None:
            return None
        h, (q, q_se) = np.exp(log_h), self.rayleigh
        amps = theta[int(self.columns[0]) : int(self.columns[0]) + self.groups]
        scale = rayleigh_scale(h, self.meas.lr, self.meas.momentum, amps)
        if scale <= 0:
            return None
        row = np.zeros(theta.size)
        start = int(self.columns[0])
        row[start : start + self.groups] = rayleigh_row(h, self.meas.lr, self.meas.momentum, q) / (
            scale * max(q_se, 1e-12 * q)
        )
        return row

    def solve(self, log_h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Weighted residuals and the linear parameters for the curvatures exp(log_h)."""
        xw, yw = self.matrix(log_h), self.y / self.se
        nonneg = np.ones(xw.shape[1], dtype=bool)
        nonneg[0] = not self.columns[0]
        theta = bounded_lstsq(xw, yw, nonneg)
        row = self._rayleigh(log_h, theta)
        if row is not None:
            xw, yw = np.vstack([xw, row]), np.append(yw, 0.0)
            theta = bounded_lstsq(xw, yw, nonneg)
        return xw @ theta - yw, theta

    def residual(self, log_h: np.ndarray) -> np.ndarray:
        return self.solve(np.sort(log_h)[::-1])[0]


def _bounds(meas: RunMeasurements) -> tuple[float, float]:
    upper = 0.999 * 2.0 * (1.0 + meas.momentum) / meas.lr
    if meas.hessian_top_eigenvalue is not None:
        upper = min(upper, meas.hessian_top_eigenvalue)
    lower = (1.0 - meas.momentum) / (meas.lr * 3.0 * meas.horizon_steps)
    if lower >= upper:
        raise ValueError(
            f"no curvature range to search: the slowest resolvable curvature {lower:.3g} is above the "
            f"largest allowed {upper:.3g} (hessian_top_eigenvalue too small for this lr and horizon?)"
        )
    return float(np.log(lower)), float(np.log(upper))


def _fit_count(problem: _Problem, lower: float, upper: float, starts: int) -> tuple[np.ndarray, float]:
    j = problem.groups
    grid = np.linspace(lower, upper, j + 5)[1:-1]
    combos = [np.array(c[::-1]) for c in itertools.combinations(grid, j)]
    costs = [float(np.sum(problem.residual(c) ** 2)) for c in combos]
    best_u, best_cost = None, np.inf
    for idx in np.argsort(costs)[: starts or len(combos)]:
        u, cost = levenberg_marquardt(problem.residual, combos[idx], np.full(j, lower), np.full(j, upper))
        if cost < best_cost:
            best_u, best_cost = np.sort(u)[::-1], cost
    return best_u, best_cost


def _estimated_se(
    chans: list[Channel], problem: _Problem, log_h: np.ndarray
) -> tuple[list[np.ndarray], list[str]]:
    """Channels without standard errors get their residuals' RMS (pooled when a channel has < 3 points)."""
    resid = problem.solve(log_h)[0][: problem.y.size] * problem.se
    out, notes, offset, pooled = [], [], 0, []
    spans = []
    for c in chans:
        spans.append(slice(offset, offset + c.values.size))
        offset += c.values.size
        if c.se is None and c.values.size >= 3 and c.name not in ("loss_autocov", "weight_autocov"):
            pooled.append(resid[spans[-1]])
    pooled_rms = float(np.sqrt(np.mean(np.concatenate(pooled) ** 2))) if pooled else None
    for c, span in zip(chans, spans):
        if c.se is not None:
            out.append(c.se)
            continue
        n = c.values.size
        rms = float(np.sqrt(np.sum(resid[span] ** 2) / max(n - 1, 1))) if n >= 3 else pooled_rms
        if rms is None:
            rms = max(float(np.std(c.values)), 1e-3 * float(np.mean(np.abs(c.values))), 1e-12)
        floor = 1e-6 * max(float(np.max(np.abs(c.values))), 1e-12)
        out.append(np.full(n, max(rms, floor)))
        notes.append(
            f"{c.name}: no standard errors given; used the fit's residual scatter ({out[-1][0]:.3g})"
        )
    return out, notes


def _inflated_se(
    problem: _Problem, u: np.ndarray, se: list[np.ndarray]
) -> tuple[list[np.ndarray], list[str]]:
    """Per-channel Birge ratio: SEs times sqrt(chi2_c / n_c) where it exceeds 1 (channels of >= 3 points)."""
    resid = problem.solve(u)[0]
    out, notes, offset = [], [], 0
    for c, errors in zip(problem.chans, se):
        part = resid[offset : offset + c.values.size]
        offset += c.values.size
        ratio = float(np.sqrt(part @ part / c.values.size))
        if c.values.size >= 3 and ratio > 1.0:
            out.append(errors * ratio)
            notes.append(f"{c.name}: scatter {ratio:.2g}x its standard errors; they were scaled by that")
        else:
            out.append(errors)
    return out, notes


def _provisional_se(chans: list[Channel]) -> list[np.ndarray]:
    out = []
    for c in chans:
        scale = max(
            float(np.std(c.values)) if c.values.size > 2 else 0.0,
            0.01 * float(np.mean(np.abs(c.values))),
            1e-12,
        )
        out.append(c.se if c.se is not None else np.full(c.values.size, scale))
    return out


def _covariance(problem: _Problem, u: np.ndarray, theta: np.ndarray, cost: float) -> tuple[np.ndarray, int]:
    j = u.size
    y_w = problem.y / problem.se

    def full(p: np.ndarray) -> np.ndarray:
        xw = problem.matrix(p[:j])
        r = xw @ p[j:] - y_w
        row = problem._rayleigh(p[:j], p[j:])
        return r if row is None else np.append(r, row @ p[j:])

    p = np.concatenate([u, theta])
    offset = int(problem.columns[0])
    amps = theta[offset : offset + j]
    nonneg = np.ones(theta.size, dtype=bool)
    nonneg[0] = not problem.columns[0]
    free = np.concatenate([amps > 0, ~nonneg | (theta > 0)])
    jac = numerical_jacobian(full, p)[:, free]
    dof = max(jac.shape[0] - int(free.sum()), 1)
    scale = max(1.0, cost / dof)
    cov = np.full((p.size, p.size), np.nan)
    cov[np.ix_(free, free)] = np.linalg.pinv(jac.T @ jac) * scale
    return cov, dof


def fit_timescales(
    meas: RunMeasurements,
    num_groups: int | None = None,
    max_groups: int = 3,
    starts: int | None = None,
    inflate_errors: bool = True,
) -> MultiscaleFit:
    """Fit J curvature groups (h_j, A_j) and the loss floor L_min to ``meas``.

    Args:
        meas: the run's measurements (any subset; needs two-point gains, EMA losses or ladder branches).
        num_groups: J; None picks J in 1..max_groups by BIC (chi^2 + parameters * ln n).
        max_groups: the largest J tried when ``num_groups`` is None.
        inflate_errors: scale each channel's standard errors by sqrt(chi2_c / n_c) when its scatter
            about a first fit (J = max_groups) exceeds them (the Birge ratio, as when combining data sets
            whose errors are understated), so that no channel outweighs the others by its optimism alone.
        starts: Levenberg-Marquardt starts per J (the lowest-cost points of a log-curvature grid;
            None: every point of the grid, C(J + 3, J) starts).

    Returns:
        MultiscaleFit; groups sorted by decreasing curvature (increasing relaxation time).

    Raises:
        ValueError: for measurements with no loss-weight information or a bad group count.
    """
    chans = channels(meas)
    if not any(c.name in ("two_point", "ema") or c.name.startswith("ladder") for c in chans):
        raise ValueError(
            "fit_timescales needs measurements whose size depends on the loss weights: two-point gains, "
            "EMA losses or lr-ladder branches (autocovariances and curvature probes only give timescales)"
        )
    counts = [num_groups] if num_groups is not None else list(range(1, int(max_groups) + 1))
    if min(counts) < 1 or max(counts) > 6:
        raise ValueError(f"the number of groups must be in 1..6, got {counts}")
    bounds = _bounds(meas)
    se, notes = _provisional_se(chans), []
    if any(c.se is None for c in chans):
        problem = _Problem(meas, chans, se, max(counts))
        u, _ = _fit_count(problem, *bounds, starts)
        se, notes = _estimated_se(chans, problem, u)
    if inflate_errors:
        problem = _Problem(meas, chans, se, max(counts))
        u, _ = _fit_count(problem, *bounds, starts)
        se, inflated = _inflated_se(problem, u, se)
        notes += inflated
    fits = {}
    for j in counts:
        problem = _Problem(meas, chans, se, j)
        u, cost = _fit_count(problem, *bounds, starts)
        n = problem.y.size + (problem.rayleigh is not None)
        fits[j] = (problem, u, cost, cost + (j + int(problem.columns.sum())) * np.log(n))
    candidates = tuple({"groups": j, "chi2": f[2], "bic": f[3]} for j, f in fits.items())
    problem, u, cost, _ = min(fits.values(), key=lambda f: f[3])
    return _result(meas, problem, u, cost, bounds, notes, candidates)


def _channel_chi2(problem: _Problem, resid: np.ndarray) -> dict:
    """chi^2 and number of points per channel (and of the Rayleigh row) at the fitted parameters."""
    out, offset = {}, 0
    for c in problem.chans:
        part = resid[offset : offset + c.values.size]
        out[c.name] = {"chi2": float(part @ part), "points": int(c.values.size)}
        offset += c.values.size
    if resid.size > offset:
        out["rayleigh"] = {"chi2": float(resid[offset:] @ resid[offset:]), "points": 1}
    return out


def _result(meas, problem, u, cost, bounds, notes, candidates) -> MultiscaleFit:
    j = u.size
    resid, theta = problem.solve(u)
    cov, dof = _covariance(problem, u, theta, cost)
    per_channel = _channel_chi2(problem, resid)
    offset = int(problem.columns[0])
    h = np.exp(u)
    taus = relaxation_steps(meas.lr, h, meas.momentum)
    groups = []
    for i in range(j):
        amp, amp_var = float(theta[offset + i]), cov[j + offset + i, j + offset + i]
        amp_se = float(np.sqrt(amp_var)) if np.isfinite(amp_var) else float("nan")
        log_se = float(np.sqrt(cov[i, i])) if np.isfinite(cov[i, i]) else float("nan")
        interval = profile_interval(problem, u, i, cost, max(1.0, cost / dof), bounds) if amp > 0 else None
        reason = group_reason(i, u, interval, amp, amp_se, meas)
        span = (float(np.exp(interval[0])), float(np.exp(interval[1]))) if interval else (np.nan, np.nan)
        groups.append(
            TimescaleGroup(float(h[i]), float(h[i] * log_se), span, float(taus[i]), amp, amp_se, reason)
        )
    reasons = list(notes)
    if cost / dof > 2.0:
        reasons.append(
            f"the model misfits (chi2/dof = {cost / dof:.3g}); standard errors scaled by sqrt(chi2/dof)"
        )
    if not any(g.amplitude > 0 for g in groups):
        reasons.append(
            "no excess loss detected: every amplitude is at 0, so no equivalent lr or gain is defined"
        )
    min_loss, min_se, min_reason = float("nan"), float("nan"), None
    if problem.columns[0]:
        min_loss, min_se = float(theta[0]), float(np.sqrt(cov[j, j]))
    else:
        min_reason = "no loss level was measured (only gains or autocovariances): L_min is not determined"
    _, names = design(problem.chans, h, meas.lr, meas.momentum)
    param_names = (*(f"log_curvature_{i}" for i in range(j)), *np.asarray(names)[problem.columns])
    return MultiscaleFit(
        lr=meas.lr,
        momentum=meas.momentum,
        groups=tuple(groups),
        min_loss=min_loss,
        min_loss_se=min_se,
        min_loss_reason=min_reason,
        chi2=float(cost),
        dof=int(dof),
        channel_chi2=per_channel,
        candidates=candidates,
        reasons=tuple(reasons),
        param_names=tuple(str(n) for n in param_names),
        params=np.concatenate([u, theta]),
        covariance=cov,
    )
