"""Equivalent learning rates and gain curves of averages over a spectrum of curvatures, exact with momentum.

A spectrum is a NoisyQuadratic {(h_i, s_i^2)} at the run's lr eta and momentum mu. Its stationary excess
loss splits into loss weights A_i = 1/2 h_i gamma_0,i = 1/2 h_i f(eta h_i) s_i^2 (``loss_weights``), and an
average of iterates with per-direction variance ratio R_i (``heavy_ball``) has excess sum_i A_i R_i.

Equivalent lr (the choice made here): the constant lr eta' whose *stationary excess loss* equals the
average's, i.e. the root of

    E(eta') = sum_i A_i f(eta' h_i) / f(eta h_i) = sum_i A_i R_i,

which is unique because f is increasing. For small eta h it is eta' = eta sum A R / sum A, a loss-
weighted mean of the per-direction ratios. Matching on another loss that shares the dynamics (a
held-out loss with its own weights A^test) is the same equation with A^test: pass ``weights``.
Derivations: docs/theory.md sec. 9.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from trajlab.theory import heavy_ball
from trajlab.theory._validate import decay_value, gap_value, nonnegative_array, positive_scalar
from trajlab.theory.nqm import NoisyQuadratic


def loss_weights(model: NoisyQuadratic) -> np.ndarray:
    """A_i = 1/2 h_i gamma_0,i: each direction's share of the stationary excess loss at the model's lr."""
    return 0.5 * model.curvatures * model.stationary_variance()


def _weights(model: NoisyQuadratic, weights: ArrayLike | None) -> np.ndarray:
    a = loss_weights(model) if weights is None else nonnegative_array("weights", weights)
    if a.shape != model.curvatures.shape:
        raise ValueError(f"weights {a.shape} must match the model's curvatures {model.curvatures.shape}")
    if not np.any(a[model.curvatures > 0] > 0):
        raise ValueError(
            "the spectrum has no excess loss (every loss weight of a direction with h > 0 is 0): "
            "an equivalent lr is undefined; check the noise s^2 or the weights"
        )
    return a


def equivalent_lr_for_ratios(
    model: NoisyQuadratic, ratios: ArrayLike, weights: ArrayLike | None = None
) -> float:
    """The constant lr eta' with sum_i A_i f(eta' h_i) / f(eta h_i) = sum_i A_i R_i (bisection in log lr).

    Args:
        model: the spectrum at the run's lr and momentum.
        ratios: R_i = Var(average)_i / Var(iterate)_i per direction (``heavy_ball``), shape (d,).
        weights: loss weights A_i of the loss to match on; default ``loss_weights(model)``.

    Returns:
        eta' in (0, 2 (1 + mu) / max h); exactly 0.0 only if every weighted ratio is 0.
    """
    a = _weights(model, weights)
    r = nonnegative_array("ratios", ratios)
    moving = model.curvatures > 0
    h, a, r = model.curvatures[moving], a[moving], r[moving]
    base = heavy_ball.stationary_factor(model.lr, h, model.momentum)
    target = float(np.sum(a * r))
    if target <= 0:
        return 0.0
    lo, hi = np.log(model.lr * 1e-14), np.log(2.0 * (1.0 + model.momentum) / h.max() * (1 - 1e-12))
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        value = np.sum(a * heavy_ball.stationary_factor(np.exp(mid), h, model.momentum) / base)
        lo, hi = (mid, hi) if value < target else (lo, mid)
        if hi - lo < 1e-13:
            break
    return float(np.exp(0.5 * (lo + hi)))


def ema_equivalent_lr(model: NoisyQuadratic, decay: float, weights: ArrayLike | None = None) -> float:
    """Equivalent constant lr of EMA(decay) of the run (ratio (1-b)/(1+b) (2 P(b) - 1) per direction)."""
    ratios = heavy_ball.ema_variance_ratio(decay_value(decay), model.lr, model.curvatures, model.momentum)
    return equivalent_lr_for_ratios(model, ratios, weights)


def two_point_equivalent_lr(model: NoisyQuadratic, gap: int, weights: ArrayLike | None = None) -> float:
    """Equivalent constant lr of (theta_t + theta_{t-gap}) / 2 (ratio (1 + rho_gap) / 2 per direction)."""
    ratios = heavy_ball.two_point_variance_ratio(
        [gap_value("gap", gap)], model.lr, model.curvatures, model.momentum
    )
    return equivalent_lr_for_ratios(model, ratios[0], weights)


def kernel_equivalent_lr(model: NoisyQuadratic, kernel: ArrayLike, weights: ArrayLike | None = None) -> float:
    """Equivalent constant lr of any average sum_j w_j theta_{t-T+j} (kernel w_0..w_T, oldest first)."""
    ratios = heavy_ball.kernel_variance_ratio(kernel, model.lr, model.curvatures, model.momentum)
    return equivalent_lr_for_ratios(model, ratios, weights)


def excess_loss_ratio(model: NoisyQuadratic, ratios: ArrayLike, weights: ArrayLike | None = None) -> float:
    """sum_i A_i R_i / sum_i A_i: the average's stationary excess loss relative to the last iterate's."""
    a = _weights(model, weights)
    return float(np.sum(a * nonnegative_array("ratios", ratios)) / np.sum(a))


def two_point_gain_curve(
    model: NoisyQuadratic, gaps: ArrayLike, weights: ArrayLike | None = None
) -> np.ndarray:
    """gain(k) = excess(last iterate) - excess(two-point at gap k) = sum_i A_i (1 - rho_i(k)) / 2.

    Rises from sum_i A_i eps_i / (2 (1 + mu)) at k = 1 to sum_i A_i / 2 once k exceeds every relaxation
    time; with momentum each fast direction's term oscillates with the period of its complex roots.

    Returns:
        gains, shape (len(gaps),).
    """
    a = _weights(model, weights)
    gaps = np.asarray([gap_value("gap", k) for k in np.atleast_1d(gaps)])
    rho = heavy_ball.autocorrelation(gaps, model.lr, model.curvatures, model.momentum)
    return 0.5 * (1.0 - rho) @ a


def ema_excess_loss(model: NoisyQuadratic, decay: float, weights: ArrayLike | None = None) -> float:
    """Stationary excess loss of EMA(decay): sum_i A_i R_i^EMA."""
    a = _weights(model, weights)
    return float(a @ heavy_ball.ema_variance_ratio(decay, model.lr, model.curvatures, model.momentum))


def lr_drop_excess_loss(
    model: NoisyQuadratic, new_lr: float, ages: ArrayLike, weights: ArrayLike | None = None
) -> np.ndarray:
    """Expected excess loss ``ages`` steps after the lr drops from the model's (stationary) lr to ``new_lr``.

    sum_i A_i m_i(age), m_i from ``heavy_ball.lr_drop_variance_ratio`` (PyTorch velocity convention).
    """
    a = _weights(model, weights)
    m = heavy_ball.lr_drop_variance_ratio(
        ages, model.lr, positive_scalar("new_lr", new_lr), model.curvatures, model.momentum
    )
    return m @ a


def from_loss_weights(
    curvatures: ArrayLike, weights: ArrayLike, lr: float, momentum: float = 0.0
) -> NoisyQuadratic:
    """The spectrum whose loss weights at ``lr`` are ``weights``: s_i^2 = 2 A_i / (h_i f(lr h_i))."""
    h = nonnegative_array("curvatures", curvatures)
    a = nonnegative_array("weights", weights)
    if h.shape != a.shape:
        raise ValueError(f"curvatures {h.shape} and weights {a.shape} must have the same length")
    if np.any((h == 0) & (a > 0)):
        raise ValueError("a flat direction (h = 0) has no stationary excess loss; its weight must be 0")
    f = heavy_ball.stationary_factor(lr, h, momentum)
    with np.errstate(divide="ignore", invalid="ignore"):
        noise = np.where(h > 0, 2.0 * a / (h * f), 0.0)
    return NoisyQuadratic(h, noise, lr, momentum)
