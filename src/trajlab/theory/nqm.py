"""The paper's noisy quadratic model (NQM) and its exact closed forms per eigen-direction.

Model (paper.md sec. 3, in this code's notation): the loss of batch B is
L_B(theta) = 1/2 (theta - theta*_B)^T H (theta - theta*_B) + c_B with a shared PSD Hessian H
(eigenvalues ``curvatures`` h_i) and per-batch minima theta*_B = theta* + xi_B, Var(xi_{B,i}) = s_i^2
(``noise``). SGD with learning rate eta and heavy-ball momentum mu moves each eigen-direction as

    x_t = (1 + mu - eps) x_{t-1} - mu x_{t-2} + eps xi_t,   eps = eta h,   x_{-1} = x_0,

where x_t = <theta_t - theta*, u_i>. The expected excess full-batch loss is 1/2 sum_i h_i E[x_i^2].
Everything here is exact for mu > 0 (2x2 / 3x3 moment recursions), not only via eta / (1 - mu).
See docs/theory.md for the derivations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from trajlab.theory import _linear
from trajlab.theory._rules import RuleSpec, describe_rule
from trajlab.theory._validate import (
    momentum_value,
    nonnegative_array,
    positive_scalar,
    stable_step,
    steps_value,
)


class NoisyQuadratic:
    """Per-direction closed forms of SGD on the noisy quadratic model.

    Args:
        curvatures: Hessian eigenvalues h_i >= 0, shape (d,) or a scalar.
        noise: variance s_i^2 >= 0 of the per-batch minima along u_i, shape (d,) or a scalar.
        lr: learning rate eta > 0.
        momentum: heavy-ball momentum mu in [0, 1) (PyTorch SGD convention, zero initial velocity).

    Raises:
        ValueError: negative curvature or noise, momentum outside [0, 1), or lr * h_i >= 2 (1 + mu).
    """

    def __init__(self, curvatures: ArrayLike, noise: ArrayLike, lr: float, momentum: float = 0.0) -> None:
        h = nonnegative_array("curvatures", curvatures)
        s2 = nonnegative_array("noise", noise)
        if s2.size == 1 and h.size > 1:
            s2 = np.full_like(h, s2[0])
        if h.size == 1 and s2.size > 1:
            h = np.full_like(s2, h[0])
        if h.shape != s2.shape:
            raise ValueError(f"curvatures {h.shape} and noise {s2.shape} must have the same length")
        self.curvatures = h
        self.noise = s2
        self.lr = positive_scalar("lr", lr)
        self.momentum = momentum_value(momentum)
        stable_step("NoisyQuadratic", self.eps, self.momentum)

    @classmethod
    def from_density(
        cls,
        density: Callable[[np.ndarray], np.ndarray],
        curvature_range: tuple[float, float],
        num_directions: int,
        noise: float | Callable[[np.ndarray], np.ndarray],
        lr: float,
        momentum: float = 0.0,
        log_grid: bool = True,
    ) -> NoisyQuadratic:
        """Build a model from a spectral density: directions at the quantiles (i + 1/2) / d of the density.

        Args:
            density: unnormalised density of curvatures, evaluated on a grid.
            curvature_range: (h_min, h_max) with 0 <= h_min < h_max.
            num_directions: number of eigen-directions d.
            noise: s^2 per direction, a scalar or a function of the curvature.
            lr: learning rate.
            momentum: heavy-ball momentum.
            log_grid: integrate on a log-spaced grid (needs h_min > 0), good for wide spectra.
        """
        low, high = float(curvature_range[0]), float(curvature_range[1])
        if not (0 <= low < high):
            raise ValueError(f"curvature_range must satisfy 0 <= h_min < h_max, got {curvature_range}")
        if log_grid and low <= 0:
            raise ValueError("log_grid=True needs h_min > 0; pass log_grid=False for a range starting at 0")
        count = steps_value("num_directions", num_directions, minimum=1)
        grid = np.geomspace(low, high, 8193) if log_grid else np.linspace(low, high, 8193)
        pdf = nonnegative_array("density(grid)", density(grid))
        # Trapezoid CDF on the grid, inverted by interpolation at the quantiles.
        cdf = np.concatenate([[0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]) * np.diff(grid))])
        if cdf[-1] <= 0:
            raise ValueError("density integrates to 0 on curvature_range")
        h = np.interp((np.arange(count) + 0.5) / count, cdf / cdf[-1], grid)
        s2 = noise(h) if callable(noise) else noise
        return cls(h, s2, lr, momentum)

    # ---- basic per-direction quantities -------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Number of eigen-directions d."""
        return self.curvatures.size

    @property
    def eps(self) -> np.ndarray:
        """eps_i = lr * h_i, shape (d,)."""
        return self.lr * self.curvatures

    @property
    def relaxation_steps(self) -> np.ndarray:
        """tau_i = (1 - mu) / (eta h_i): steps for the mean to relax by e (inf where h_i = 0).

        Exact for mu = 0 up to -1/log(1 - eps) ~ 1/eps; with momentum it is the small-eps time constant
        of the slow root (1 - eps / (1 - mu)).
        """
        with np.errstate(divide="ignore"):
            return np.where(self.eps > 0, (1.0 - self.momentum) / np.maximum(self.eps, 1e-300), np.inf)

    def with_lr(self, lr: float, momentum: float | None = None) -> NoisyQuadratic:
        """The same spectrum and noise at another learning rate (and optionally momentum)."""
        return NoisyQuadratic(
            self.curvatures, self.noise, lr, self.momentum if momentum is None else momentum
        )

    def _system(self) -> tuple[np.ndarray, np.ndarray]:
        return _linear.transition(self.eps, self.momentum)

    def _gamma01(self) -> tuple[np.ndarray, np.ndarray]:
        # AR(2) Yule-Walker: gamma_0 = (1 + mu) eps s^2 / ((1 - mu)(2 (1 + mu) - eps)),
        # gamma_1 = phi_1 gamma_0 / (1 + mu).
        mu, eps = self.momentum, self.eps
        gamma0 = (1.0 + mu) * eps * self.noise / ((1.0 - mu) * (2.0 * (1.0 + mu) - eps))
        gamma1 = (1.0 + mu - eps) * gamma0 / (1.0 + mu)
        return gamma0, gamma1

    def _stationary_state_cov(self) -> np.ndarray:
        gamma0, gamma1 = self._gamma01()
        cov = np.empty((self.dim, 2, 2))
        cov[:, 0, 0] = cov[:, 1, 1] = gamma0
        cov[:, 0, 1] = cov[:, 1, 0] = gamma1
        return cov

    def autocovariance(self, lag: int) -> np.ndarray:
        """Stationary Cov(x_t, x_{t+lag}) per direction, gamma_k = [F^{k-1} (gamma_1, gamma_0)]_0.

        For mu = 0 this is v a^k with v = eps s^2 / (2 - eps), a = 1 - eps.
        """
        lag = steps_value("lag", lag)
        gamma0, gamma1 = self._gamma01()
        if lag == 0:
            return gamma0
        f, _ = self._system()
        f_pow = np.linalg.matrix_power(f, lag - 1)
        return f_pow[:, 0, 0] * gamma1 + f_pow[:, 0, 1] * gamma0

    # ---- stationary moments under an averaging rule --------------------------------------------------
    def stationary_variance(self, rule: Any = None, step: int | None = None) -> np.ndarray:
        """Stationary variance per direction of the iterate, or of its average under ``rule``.

        Formulas (mu = 0 shown; the code is exact for any mu):
            SGD:        v = eps s^2 / (2 - eps)
            EMA(beta):  v (1 - beta)(1 + a beta) / ((1 + beta)(1 - a beta))
            TwoPoint k: v (1 + a^k) / 2
            MultiPoint: (1/p^2) [p v + 2 sum_{m=1}^{p-1} (p - m) v a^{m k}]
            SWA window n / any weights w: sum_{j,l} w_j w_l gamma_{|j-l|}

        Args:
            rule: None, an averaging rule (duck-typed, with ``weights(step)``), or a weights array.
            step: for general rules whose weights depend on the step, the step whose weights to use.

        Returns:
            Variance per direction, shape (d,).
        """
        spec = describe_rule(rule)
        gamma0, _ = self._gamma01()
        if spec.kind == "none":
            return gamma0
        if spec.kind in ("two_point", "multi_point"):
            p = spec.points
            total = p * gamma0
            for m in range(1, p):
                total = total + 2.0 * (p - m) * self.autocovariance(m * spec.gap)
            return total / p**2
        f, b = self._system()
        if spec.kind == "ema":
            return self._stationary_ema(spec.decay)
        if spec.kind == "swa":
            if spec.window is None:
                raise ValueError(
                    "SWA without window_steps keeps shrinking and has no stationary variance; "
                    "give window_steps, or use moments_at(step, start=...) for the over-time form"
                )
            return self._swa_from(self._stationary_state_cov(), np.zeros((self.dim, 2)), spec.window)[1]
        weights = self._general_weights(spec, step)
        return _linear.weighted_moments(
            f, b, self.noise, weights, np.zeros((self.dim, 2)), self._stationary_state_cov()
        )[1]

    def _general_weights(self, spec: RuleSpec, step: int | None) -> np.ndarray:
        if callable(getattr(spec.source, "weights", None)):
            if step is None:
                raise ValueError(
                    f"{type(spec.source).__name__} has step-dependent weights: pass step=... "
                    "(the stationary variance of the average held at that step)"
                )
            return spec.weights(steps_value("step", step))
        return np.asarray(spec.source, dtype=np.float64)

    def _stationary_ema(self, decay: float) -> np.ndarray:
        f, b = self._system()
        g, c = _linear.averaged_transition(f, b, decay, 1.0 - decay)
        moving = self.eps > 0
        out = np.zeros(self.dim)
        if np.any(moving):
            out[moving] = _linear.lyapunov(g[moving], c[moving], self.noise[moving])[:, 2, 2]
        return out

    def _swa_from(self, cov_z: np.ndarray, mean_z: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance of (x_u + ... + x_{u+count-1}) / count given the state moments at u."""
        f, b = self._system()
        g, c = _linear.averaged_transition(f, b, 1.0, 1.0)
        mean = np.concatenate([mean_z, mean_z[:, :1]], axis=1)
        cov = np.zeros((self.dim, 3, 3))
        cov[:, :2, :2] = cov_z
        cov[:, 2, :2] = cov_z[:, 0, :]
        cov[:, :2, 2] = cov_z[:, :, 0]
        cov[:, 2, 2] = cov_z[:, 0, 0]
        m, s = _linear.propagate(g, c, self.noise, mean, cov, count - 1)
        return m[:, 2] / count, s[:, 2, 2] / count**2

    def excess_loss(self, rule: Any = None, step: int | None = None) -> float:
        """Stationary expected excess full-batch loss E L - L_min = 1/2 sum_i h_i Var_i (under ``rule``)."""
        return float(0.5 * np.sum(self.curvatures * self.stationary_variance(rule, step)))

    # ---- over time from a given start ---------------------------------------------------------------
    def moments_at(
        self,
        step: int,
        start: ArrayLike,
        start_variance: ArrayLike = 0.0,
        rule: Any = None,
        noise_scale: float = 1.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact mean and variance per direction at ``step`` of the iterate (or its average).

        The run starts at x_0 = ``start`` (mean, shape (d,) or scalar) with variance ``start_variance``
        and zero velocity. Moments follow m_t = G^t m_0, S_t = G^t S_0 G^tT + sum_{k<t} G^k C G^kT.

        Args:
            step: the step t >= 0.
            start: E[x_0] per direction.
            start_variance: Var[x_0] per direction.
            rule: None, an averaging rule, or a weights array (last entry = current iterate).
            noise_scale: multiplies s^2 (0 gives the deterministic mean path).

        Returns:
            (mean, variance), each of shape (d,).
        """
        step = steps_value("step", step)
        spec = describe_rule(rule)
        mean0 = np.broadcast_to(np.asarray(start, dtype=np.float64), (self.dim,)).copy()
        var0 = np.broadcast_to(nonnegative_array("start_variance", start_variance), (self.dim,)).copy()
        noise = self.noise * float(noise_scale)
        f, b = self._system()
        mean_z = np.stack([mean0, mean0], axis=1)
        cov_z = var0[:, None, None] * np.ones((1, 2, 2))
        if spec.kind == "none":
            m, s = _linear.propagate(f, b, noise, mean_z, cov_z, step)
            return m[:, 0], s[:, 0, 0]
        if spec.kind == "ema":
            g, c = _linear.averaged_transition(f, b, spec.decay, 1.0 - spec.decay)
            mean = np.stack([mean0, mean0, mean0], axis=1)
            cov = var0[:, None, None] * np.ones((1, 3, 3))
            m, s = _linear.propagate(g, c, noise, mean, cov, step)
            return m[:, 2], s[:, 2, 2]
        if spec.kind == "swa":
            first = spec.start_step if spec.window is None else max(spec.start_step, step - spec.window + 1)
            first = min(first, step)
            m, s = _linear.propagate(f, b, noise, mean_z, cov_z, first)
            saved, self.noise = self.noise, noise
            try:
                return self._swa_from(s, m, step - first + 1)
            finally:
                self.noise = saved
        weights = spec.weights(step)
        return _linear.weighted_moments(f, b, noise, weights, mean_z, cov_z)

    def excess_loss_at(
        self,
        steps: Sequence[int] | np.ndarray,
        start: ArrayLike,
        start_variance: ArrayLike = 0.0,
        rule: Any = None,
    ) -> np.ndarray:
        """Expected excess loss 1/2 sum_i h_i (mean_i^2 + var_i) at each of ``steps``, shape (len(steps),)."""
        out = []
        for t in np.atleast_1d(steps):
            m, v = self.moments_at(int(t), start, start_variance, rule)
            out.append(0.5 * np.sum(self.curvatures * (m**2 + v)))
        return np.asarray(out)

    # ---- derived observables ------------------------------------------------------------------------
    def gradient_alignment(self, rule: Any = None, step: int | None = None) -> float:
        """Ratio-of-expectations cosine between a fresh mini-batch gradient and the full gradient.

        g_B = H(delta - xi_B), grad L = H delta with xi_B independent of delta, so
        E[g_B . grad L] / sqrt(E|g_B|^2 E|grad L|^2) = sqrt(sum h^2 V / sum h^2 (V + s^2)), V the
        stationary variance of the (averaged) iterate. It is the high-dimensional limit of E cos.
        """
        var = self.stationary_variance(rule, step)
        h2 = self.curvatures**2
        full = np.sum(h2 * var)
        total = np.sum(h2 * (var + self.noise))
        return float(np.sqrt(full / total)) if total > 0 else 0.0

    def batch_memory(self, lags: Sequence[int] | int) -> np.ndarray:
        """Stationary E[L_{B_t}(theta_{t+k})] - E[L_{B'}(theta_{t+k})] for the batch B_t that made theta_t.

        Equals -sum_i h_i Cov(x_{t+k}, xi_t) = -sum_i h_i eps_i s_i^2 psi_i(k), with psi(k) = [F^k]_{00}
        the impulse response (a^k for mu = 0). Negative: the used batch's loss is lower.
        """
        f, _ = self._system()
        out = []
        for k in np.atleast_1d(lags):
            psi = np.linalg.matrix_power(f, steps_value("lag", int(k)))[:, 0, 0]
            out.append(-np.sum(self.curvatures * self.eps * self.noise * psi))
        return np.asarray(out)

    def trajectory_distance(self, step: int, start_difference: ArrayLike = 1.0, rule: Any = None) -> dict:
        """Expected squared distance between two runs at ``step``.

        ``same_batches``: runs from starts differing by ``start_difference`` fed the same batches; the
        difference follows the noise-free recursion, so |D_t|^2 = sum_i (F^t-path of D_0)_i^2.
        ``different_orders``: runs from the same start with independent batches: 2 sum_i Var_t(x_i).
        """
        diff, _ = self.moments_at(step, start_difference, 0.0, rule, noise_scale=0.0)
        _, var = self.moments_at(step, 0.0, 0.0, rule)
        return {"same_batches": float(np.sum(diff**2)), "different_orders": float(2.0 * np.sum(var))}
