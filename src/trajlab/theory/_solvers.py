"""Small numpy solvers for the timescale fit: bounded linear least squares and Levenberg-Marquardt."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _free_solve(a: np.ndarray, b: np.ndarray, passive: np.ndarray) -> np.ndarray:
    x = np.zeros(a.shape[1])
    if np.any(passive):
        x[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
    return x


def bounded_lstsq(a: np.ndarray, b: np.ndarray, nonnegative: np.ndarray, max_iter: int = 200) -> np.ndarray:
    """min |a x - b|^2 subject to x_i >= 0 where ``nonnegative`` (Lawson-Hanson active set; others free).

    Variables not marked ``nonnegative`` always stay in the passive (free) set. Returns x with exact zeros
    for the constrained variables at their bound.
    """
    nonneg = np.asarray(nonnegative, dtype=bool)
    passive = ~nonneg
    x = _free_solve(a, b, passive)
    tol = 1e-12 * max(1.0, float(np.abs(a).max(initial=0.0)) * float(np.abs(b).max(initial=0.0)))
    for _ in range(max_iter):
        grad = a.T @ (b - a @ x)
        candidates = np.flatnonzero(nonneg & ~passive & (grad > tol))
        if candidates.size == 0:
            break
        passive[candidates[np.argmax(grad[candidates])]] = True
        for _inner in range(max_iter):
            s = _free_solve(a, b, passive)
            bad = passive & nonneg & (s <= 0)
            if not np.any(bad):
                x = s
                break
            alpha = np.min(x[bad] / np.maximum(x[bad] - s[bad], 1e-300))
            x = x + alpha * (s - x)
            passive &= ~(nonneg & (x <= 1e-15))
            x[nonneg & ~passive] = 0.0
    return x


def levenberg_marquardt(
    fun: Callable[[np.ndarray], np.ndarray],
    x0: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    max_iter: int = 60,
    tol: float = 1e-9,
) -> tuple[np.ndarray, float]:
    """Minimise |fun(x)|^2 over the box [lower, upper] (steps clipped to it); forward-difference Jacobian.

    Returns:
        (x, cost) at the best point found.
    """
    x = np.clip(np.asarray(x0, dtype=np.float64), lower, upper)
    r = fun(x)
    cost = float(r @ r)
    damping = 1e-2
    for _ in range(max_iter):
        jac = numerical_jacobian(fun, x, r)
        grad, normal = jac.T @ r, jac.T @ jac
        improved = False
        while damping < 1e10:
            step = np.linalg.solve(
                normal + damping * (np.diag(np.diag(normal)) + 1e-12 * np.eye(x.size)), -grad
            )
            trial = np.clip(x + step, lower, upper)
            r_trial = fun(trial)
            cost_trial = float(r_trial @ r_trial)
            if cost_trial < cost:
                improved = cost - cost_trial > tol * max(cost, 1e-300)
                x, r, cost = trial, r_trial, cost_trial
                damping = max(damping / 3.0, 1e-9)
                break
            damping *= 4.0
        if not improved:
            break
    return x, cost


def numerical_jacobian(
    fun: Callable[[np.ndarray], np.ndarray], x: np.ndarray, r0: np.ndarray | None = None
) -> np.ndarray:
    """Forward-difference Jacobian d fun / d x, shape (len(fun(x)), len(x)); step 1e-6 (1 + |x|)."""
    r0 = fun(x) if r0 is None else r0
    jac = np.empty((r0.size, x.size))
    for i in range(x.size):
        dx = 1e-6 * (1.0 + abs(x[i]))
        shifted = x.copy()
        shifted[i] += dx
        jac[:, i] = (fun(shifted) - r0) / dx
    return jac
