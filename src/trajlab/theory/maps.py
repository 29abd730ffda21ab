"""Averaging <-> learning-rate schedule maps of the isotropic noisy quadratic model.

Any linear aggregate of SGD iterates is a weighted sum of theta_0 and the per-batch minima theta*_{B_m}:
A = c_0 theta_0 + sum_{m>=1} c_m theta*_{B_m}, sum c = 1. Plain SGD with schedule eps_m = eta_m h gives
c_m = eps_m prod_{i>m} (1 - eps_i), c_0 = prod_i (1 - eps_i). Inverting backwards,

    eta_j h = c_j / (c_0 + sum_{i<=j} c_i),

so the schedule's last iterate *is* the aggregate, exactly, on every noise sequence (paper.md sec. 3).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from trajlab.theory._rules import describe_rule
from trajlab.theory._validate import (
    momentum_value,
    nonnegative_array,
    positive_scalar,
    stable_step,
    steps_value,
)
from trajlab.theory.nqm import NoisyQuadratic


def _lr_array(lr: float | ArrayLike, steps: int) -> np.ndarray:
    lrs = np.asarray(lr, dtype=np.float64)
    if lrs.ndim == 0:
        return np.full(steps, positive_scalar("lr", float(lrs)))
    if lrs.shape != (steps,):
        raise ValueError(f"an lr schedule must have one entry per step 1..{steps}, got shape {lrs.shape}")
    # Negative entries are allowed: an exact map can need them when the aggregate puts negative weight on
    # some minima (e.g. the overshoot of heavy-ball momentum).
    if np.any(~np.isfinite(lrs)):
        raise ValueError("lr schedule entries must be finite")
    return lrs


def minima_weights(
    rule: Any, lr: float | ArrayLike, curvature: ArrayLike, steps: int, momentum: float = 0.0
) -> np.ndarray:
    """Weights c (shape (..., steps + 1)) of theta_0 and theta*_{B_1..B_steps} in the averaged iterate.

    With iterate weights w_j (``rule.weights(steps)``) and SGD on lr schedule eta_t, the backward
    recursion q_m = w_m e1 + q_{m+1} F_{m+1} gives c_m = eps_m q_m[0] (m >= 1) and c_0 = q_0 . (1, 1)
    (heavy ball with zero initial velocity: x_{-1} = x_0).

    Args:
        rule: averaging rule or weights array (None: the last iterate).
        lr: constant lr or a schedule of shape (steps,) (lr used at steps 1..steps).
        curvature: h, a scalar or an array over directions.
        steps: the step T whose average is mapped.
        momentum: heavy-ball momentum of the averaged run.
    """
    steps = steps_value("steps", steps, minimum=1)
    mu = momentum_value(momentum)
    h = nonnegative_array("curvature", curvature)
    lrs = _lr_array(lr, steps)
    stable_step("minima_weights", np.outer(h, lrs), mu)
    w = describe_rule(rule).weights(steps)
    q = np.zeros((h.size, 2))
    c = np.zeros((h.size, steps + 1))
    for m in range(steps, 0, -1):
        q[:, 0] += w[m]
        eps = lrs[m - 1] * h
        c[:, m] = eps * q[:, 0]
        # q_{m-1} = w_{m-1} e1 + q_m F_m with F_m = [[1 + mu - eps_m, -mu], [1, 0]].
        q = np.stack([q[:, 0] * (1.0 + mu - eps) + q[:, 1], -mu * q[:, 0]], axis=1)
    q[:, 0] += w[0]
    c[:, 0] = q[:, 0] + q[:, 1]
    return c[0] if np.ndim(curvature) == 0 else c


def schedule_for_minima_weights(c: np.ndarray, curvature: ArrayLike) -> np.ndarray:
    """Plain-SGD lr schedule eta_j = c_j / (h (c_0 + sum_{i<=j} c_i)), j = 1..T, for minima weights c."""
    c = np.asarray(c, dtype=np.float64)
    h = np.asarray(curvature, dtype=np.float64)
    if np.any(h <= 0):
        raise ValueError("the schedule map needs curvature > 0 (a flat direction has no lr that moves it)")
    denom = c[..., :1] + np.cumsum(c[..., 1:], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        eps = np.where(denom != 0, c[..., 1:] / denom, 0.0)
    return eps / (h[..., None] if h.ndim else h)


def equivalent_schedule(
    rule: Any, lr: float | ArrayLike, curvature: ArrayLike, steps: int, momentum: float = 0.0
) -> np.ndarray:
    """The plain-SGD lr schedule whose last iterate equals ``rule``'s average of an SGD(lr) run.

    eta'_j h = c_j / (c_0 + sum_{i<=j} c_i) with c = minima_weights(rule, lr, h, steps). Exact (every
    noise sequence) for the isotropic model H = h I; for a spectrum pass an array of curvatures to get one
    schedule per direction, shape (d, steps), and use ``schedule_error`` for the error of sharing one.

    Returns:
        lrs for steps 1..steps, shape (steps,) (or (d, steps) for an array of curvatures).
    """
    return schedule_for_minima_weights(minima_weights(rule, lr, curvature, steps, momentum), curvature)


def averaging_for_schedule(lrs: ArrayLike, curvature: float, lr: float) -> np.ndarray:
    """Iterate weights w_0..w_T on a constant-``lr`` SGD run that reproduce SGD with schedule ``lrs``.

    The schedule's minima weights are c_m = eps'_m prod_{i>m} (1 - eps'_i), c_0 = prod (1 - eps'_i);
    inverting q_m = w_m + a q_{m+1} with q_m = c_m / eps (m >= 1), q_0 = c_0, a = 1 - eps:
    w_m = (c_m - a c_{m+1}) / eps for m >= 1 and w_0 = c_0 - a c_1 / eps.

    Args:
        lrs: the target schedule, lr at steps 1..T.
        curvature: the isotropic curvature h > 0.
        lr: the constant lr of the run to be averaged.

    Returns:
        weights, shape (T + 1,), summing to 1 (they can be negative for schedules that rise).
    """
    h = positive_scalar("curvature", curvature)
    lrs = np.asarray(lrs, dtype=np.float64)
    steps = lrs.size
    eps_target = _lr_array(lrs, steps) * h
    stable_step("averaging_for_schedule (target)", eps_target, 0.0)
    eps = positive_scalar("lr", lr) * h
    stable_step("averaging_for_schedule (base run)", np.array([eps]), 0.0)
    # tail[m] = prod_{i>m} (1 - eps'_i), computed backwards.
    tail = np.ones(steps + 1)
    tail[:-1] = np.cumprod((1.0 - eps_target)[::-1])[::-1]
    c = np.empty(steps + 1)
    c[0] = tail[0]
    c[1:] = eps_target * tail[1:]
    a = 1.0 - eps
    c_next = np.append(c[2:], 0.0)
    w = np.empty(steps + 1)
    w[1:] = (c[1:] - a * c_next) / eps
    w[0] = c[0] - a * c[1] / eps
    return w


def equivalent_lr(
    rule: Any, lr: float, curvature: ArrayLike, momentum: float = 0.0, step: int | None = None
) -> float | np.ndarray:
    """The constant lr whose stationary variance equals that of ``rule``'s average of an SGD(lr) run.

    Inverts v(eps) = (1 + mu) eps s^2 / ((1 - mu)(2 (1 + mu) - eps)): with K = V (1 - mu) / ((1 + mu) s^2),
    eps' = 2 (1 + mu) K / (1 + K), eta' = eps' / h (s^2 cancels). For TwoPoint at a large gap V = v / 2,
    giving eta' h = 2 eps / (4 - eps) ~ eta h / 2.

    Returns:
        eta', a float for a scalar curvature, else an array over directions (nan where h = 0).
    """
    model = NoisyQuadratic(curvature, 1.0, lr, momentum)
    target = model.stationary_variance(rule, step)
    mu = model.momentum
    k = target * (1.0 - mu) / (1.0 + mu)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(model.curvatures > 0, 2.0 * (1.0 + mu) * k / (1.0 + k) / model.curvatures, np.nan)
    return float(out[0]) if np.ndim(curvature) == 0 else out


def schedule_error(
    rule: Any, lr: float, curvatures: ArrayLike, steps: int, lrs: ArrayLike, momentum: float = 0.0
) -> dict:
    """How well one shared schedule ``lrs`` reproduces ``rule``'s average across a spectrum.

    Compares minima weights per direction: the noise variance of either iterate is s^2 sum_{m>=1} c_m^2,
    the memory of the start is c_0. Returns per-direction ``variance_ratio`` (schedule / average, 1 is
    exact), ``start_weight_average`` and ``start_weight_schedule``, and ``weight_distance`` = |c' - c|_2.
    """
    h = nonnegative_array("curvatures", curvatures)
    c_avg = minima_weights(rule, lr, h, steps, momentum)
    c_sched = minima_weights(None, np.asarray(lrs, dtype=np.float64), h, steps, 0.0)
    var_avg = np.sum(c_avg[:, 1:] ** 2, axis=1)
    var_sched = np.sum(c_sched[:, 1:] ** 2, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(var_avg > 0, var_sched / var_avg, np.nan)
    return {
        "variance_ratio": ratio,
        "start_weight_average": c_avg[:, 0],
        "start_weight_schedule": c_sched[:, 0],
        "weight_distance": np.linalg.norm(c_sched - c_avg, axis=1),
    }


def sgd_iterates(
    lrs: ArrayLike, curvature: float, minima: np.ndarray, start: ArrayLike, momentum: float = 0.0
):
    """Replay SGD on the isotropic model on a given noise sequence: iterates theta_0..theta_T.

    theta_t = theta_{t-1} - eta_t h (theta_{t-1} - theta*_{B_t}) + mu (theta_{t-1} - theta_{t-2}).

    Args:
        lrs: lr at steps 1..T (or a constant).
        curvature: h.
        minima: per-batch minima theta*_{B_1..B_T}, shape (T, ...) (any trailing parameter shape).
        start: theta_0, shape of one minimum.
        momentum: heavy-ball momentum.

    Returns:
        iterates, shape (T + 1, ...).
    """
    minima = np.asarray(minima, dtype=np.float64)
    steps = minima.shape[0]
    lrs = _lr_array(lrs, steps)
    h = float(curvature)
    out = np.empty((steps + 1, *minima.shape[1:]))
    out[0] = start
    prev = out[0]
    for t in range(1, steps + 1):
        out[t] = out[t - 1] - lrs[t - 1] * h * (out[t - 1] - minima[t - 1]) + momentum * (out[t - 1] - prev)
        prev = out[t - 1]
    return out
