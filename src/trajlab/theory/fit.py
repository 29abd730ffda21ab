"""Fit an effective noisy quadratic model to probe measurements, with bootstrap uncertainty.

The fitted model is isotropic along an effective direction: curvature h and total noise variance N
(sum of s_i^2 over the directions that matter). Curvature comes from any of
  * the best one-step lr per batch lambda*: h = 1 / lambda* (one GD step of 1/h lands on theta*_B);
  * curvatures along gradients g^T H g / |g|^2 (Rayleigh quotients);
  * the per-step decay rate r of a used batch's advantage: r = eta h / (1 - mu), so h = r (1 - mu) / eta;
and the noise from the stationary loss at two or more lrs, L(eta) = L_min + 1/2 h N f(eta h) with
f(eps) = (1 + mu) eps / ((1 - mu)(2 (1 + mu) - eps)), a linear least-squares problem in (L_min, N).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from trajlab.theory._validate import momentum_value, positive_scalar
from trajlab.theory.nqm import NoisyQuadratic


def _stationary_factor(eps: np.ndarray, mu: float) -> np.ndarray:
    return (1.0 + mu) * eps / ((1.0 - mu) * (2.0 * (1.0 + mu) - eps))


def _positive_samples(name: str, values: ArrayLike | None) -> np.ndarray | None:
    if values is None:
        return None
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size < 2 or np.any(~np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must hold at least 2 finite values > 0 (one per batch/measurement)")
    return arr


@dataclass
class FitResult:
    """A fitted effective NQM. Estimated attributes end in ``_`` (scikit-learn convention)."""

    lr: float
    momentum: float
    curvature_: float
    curvature_se_: float
    noise_: float
    noise_se_: float
    min_loss_: float
    curvature_samples_: np.ndarray = field(repr=False)
    noise_samples_: np.ndarray = field(repr=False)
    spectrum_: np.ndarray = field(repr=False)

    def model(self, lr: float | None = None) -> NoisyQuadratic:
        """The fitted one-direction model at ``lr`` (default: the run's lr)."""
        return NoisyQuadratic(self.curvature_, max(self.noise_, 0.0), lr or self.lr, self.momentum)

    def predict_gain(self, rule: Any, step: int | None = None) -> dict:
        """Predicted stationary excess-loss ratio (average / last iterate) and loss gain of ``rule``.

        Returns the point estimate and the bootstrap standard error over the fit's samples.
        """

        def one(h: float, n: float) -> tuple[float, float]:
            model = NoisyQuadratic(h, max(n, 0.0), self.lr, self.momentum)
            sgd, avg = model.excess_loss(), model.excess_loss(rule, step)
            return (avg / sgd if sgd > 0 else 1.0), sgd - avg

        ratio, gain = one(self.curvature_, self.noise_)
        samples = np.array(
            [one(h, n) for h, n in zip(self.curvature_samples_[:200], self.noise_samples_[:200])]
        )
        return {
            "loss_ratio": ratio,
            "loss_ratio_se": float(samples[:, 0].std(ddof=1)) if len(samples) > 1 else float("nan"),
            "loss_gain": gain,
            "loss_gain_se": float(samples[:, 1].std(ddof=1)) if len(samples) > 1 else float("nan"),
        }


def fit(
    lr: float,
    momentum: float = 0.0,
    best_lrs: ArrayLike | None = None,
    gradient_curvatures: ArrayLike | None = None,
    memory_decay_rates: ArrayLike | None = None,
    stationary_losses: Sequence[tuple[float, float] | tuple[float, float, float]] | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
) -> FitResult:
    """Estimate the effective curvature and noise of a run from probe measurements.

    Args:
        lr: the run's learning rate eta.
        momentum: the run's heavy-ball momentum mu.
        best_lrs: best one-step lr lambda* per probed batch (h = 1 / lambda*).
        gradient_curvatures: g^T H g / |g|^2 per probed batch.
        memory_decay_rates: per-step decay rates of a used batch's loss advantage.
        stationary_losses: (lr, loss) or (lr, loss, standard_error) at >= 2 lrs at a constant-lr plateau.
        bootstrap: number of bootstrap resamples for the standard errors.
        seed: seed of the bootstrap.

    Returns:
        FitResult with curvature_, noise_ (total s^2; nan without stationary_losses), their standard
        errors, min_loss_, and spectrum_ (the pooled per-measurement curvature estimates, sorted).

    Raises:
        ValueError: if no curvature source is given, or values are non-positive.
    """
    eta = positive_scalar("lr", lr)
    mu = momentum_value(momentum)
    sources = [
        s
        for s in (
            (lambda x: 1.0 / x, _positive_samples("best_lrs", best_lrs)),
            (lambda x: x, _positive_samples("gradient_curvatures", gradient_curvatures)),
            (lambda x: x * (1.0 - mu) / eta, _positive_samples("memory_decay_rates", memory_decay_rates)),
        )
        if s[1] is not None
    ]
    if not sources:
        raise ValueError("fit needs a curvature source: best_lrs, gradient_curvatures or memory_decay_rates")
    rng = np.random.default_rng(seed)
    estimates = [to_h(x) for to_h, x in sources]

    def combine(groups: list[np.ndarray]) -> float:
        # Inverse-variance weighted mean of the per-source means (sources measure the same h).
        means = np.array([g.mean() for g in groups])
        var = np.array([max(g.var(ddof=1) / g.size, 1e-300) for g in groups])
        return float(np.sum(means / var) / np.sum(1.0 / var))

    h_hat = combine(estimates)
    h_samples = np.array(
        [combine([g[rng.integers(0, g.size, g.size)] for g in estimates]) for _ in range(int(bootstrap))]
    )
    noise, noise_samples, min_loss = float("nan"), np.full(h_samples.size, np.nan), float("nan")
    if stationary_losses is not None:
        rows = np.array([list(r) + [0.0] * (3 - len(r)) for r in stationary_losses], dtype=np.float64)
        if rows.shape[0] < 2 or np.unique(rows[:, 0]).size < 2:
            raise ValueError("stationary_losses needs losses at >= 2 different learning rates")

        def solve(h: float, losses: np.ndarray) -> tuple[float, float]:
            design = np.stack(
                [np.ones(rows.shape[0]), 0.5 * h * _stationary_factor(rows[:, 0] * h, mu)], axis=1
            )
            (lmin, n), *_ = np.linalg.lstsq(design, losses, rcond=None)
            return float(lmin), float(n)

        if np.any(rows[:, 0] * h_hat >= 2 * (1 + mu)):
            raise ValueError("a stationary-loss lr times the fitted curvature reaches the stability limit")
        min_loss, noise = solve(h_hat, rows[:, 1])
        noise_samples = np.array(
            [solve(h, rows[:, 1] + rows[:, 2] * rng.standard_normal(rows.shape[0]))[1] for h in h_samples]
        )
    return FitResult(
        lr=eta,
        momentum=mu,
        curvature_=h_hat,
        curvature_se_=float(h_samples.std(ddof=1)),
        noise_=noise,
        noise_se_=float(np.nanstd(noise_samples, ddof=1))
        if np.any(np.isfinite(noise_samples))
        else float("nan"),
        min_loss_=min_loss,
        curvature_samples_=h_samples,
        noise_samples_=np.where(np.isfinite(noise_samples), noise_samples, 0.0),
        spectrum_=np.sort(np.concatenate(estimates)),
    )
