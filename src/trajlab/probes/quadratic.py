"""Quadratic fits of a loss along a line, as pure functions on numbers (float64 numpy).

Along the line theta - lr * d the loss of an exactly quadratic objective is the parabola

    f(lr) = c + b * lr + a * lr^2,   c = L(theta),  b = -g^T d,  a = d^T H d / 2,

with minimiser lr* = -b / (2a) and minimum f(lr*) = c - b^2 / (4a). The probes fit this model to measured
losses and report how well it fits (R^2); these helpers are that maths and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def fit_quadratic(lrs: Sequence[float], losses: Sequence[float]) -> tuple[float, float, float, float]:
    """Least-squares parabola ``f(lr) ~= a lr^2 + b lr + c`` and its coefficient of determination.

    R^2 = 1 - sum_i (f_i - fhat_i)^2 / sum_i (f_i - mean f)^2 (1.0 when all losses are equal and fitted).

    Args:
        lrs: step sizes, at least three distinct values.
        losses: the measured losses at ``lrs``.

    Returns:
        ``(a, b, c, r2)``.
    """
    x = np.asarray(lrs, dtype=np.float64)
    f = np.asarray(losses, dtype=np.float64)
    if x.shape != f.shape or x.ndim != 1:
        raise ValueError(f"lrs and losses must be 1-d and of equal length, got {x.shape} and {f.shape}")
    if np.unique(x).size < 3:
        raise ValueError(f"a quadratic fit needs at least 3 distinct lrs, got {np.unique(x).size}")
    # Fit in the scaled variable u = lr / s (s = max |lr|) so the Vandermonde matrix is well conditioned
    # whatever the lr scale (1e-4 or 1e2), then map back: a = a_u / s^2, b = b_u / s.
    s = float(np.max(np.abs(x)))
    u = x / s
    design = np.stack([u * u, u, np.ones_like(u)], axis=1)  # [n, 3]
    (a_u, b_u, c), *_ = np.linalg.lstsq(design, f, rcond=None)
    resid = f - design @ np.array([a_u, b_u, c])
    ss_tot = float(np.sum((f - f.mean()) ** 2))
    ss_res = float(np.sum(resid**2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)
    return float(a_u / s**2), float(b_u / s), float(c), r2


def parabola_vertex(a: float, b: float, c: float) -> tuple[float, float]:
    """``(lr*, f(lr*)) = (-b / 2a, c - b^2 / 4a)``; ``(nan, nan)`` when the parabola is not convex."""
    if not a > 0:
        return float("nan"), float("nan")
    return -b / (2 * a), c - b * b / (4 * a)


def parabola_through(xs: Sequence[float], fs: Sequence[float]) -> tuple[float, float, float]:
    """The parabola ``a x^2 + b x + c`` through three points (Newton divided differences).

    a = f[x0, x1, x2], b = f[x0, x1] - a (x0 + x1), c = f0 - x0 f[x0, x1] + a x0 x1.
    """
    (x0, x1, x2), (f0, f1, f2) = xs, fs
    d01 = (f1 - f0) / (x1 - x0)
    d12 = (f2 - f1) / (x2 - x1)
    a = (d12 - d01) / (x2 - x0)
    b = d01 - a * (x0 + x1)
    c = f0 - x0 * d01 + a * x0 * x1
    return a, b, c


def parabola_from_slope(f0: float, slope0: float, x1: float, f1: float) -> tuple[float, float, float]:
    """The parabola with value ``f0`` and slope ``slope0`` at 0 that passes through ``(x1, f1)``.

    a = (f1 - f0 - slope0 x1) / x1^2, b = slope0, c = f0. Along theta - lr d the slope at 0 is -g^T d,
    known exactly from the gradient, so one extra forward gives a full parabola.
    """
    return (f1 - f0 - slope0 * x1) / (x1 * x1), slope0, f0


def fit_window(
    lrs: Sequence[float], losses: Sequence[float], lr_star: float, width: float = 2.0
) -> np.ndarray:
    """Boolean mask of the points with ``0 <= lr <= width * lr_star``, the range the paper's fit covers."""
    x = np.asarray(lrs, dtype=np.float64)
    return (x >= 0) & (x <= width * lr_star * (1 + 1e-12))
