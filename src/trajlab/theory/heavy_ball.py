"""Closed forms of stationary heavy-ball SGD per curvature: autocorrelation, averages, lr drops.

One eigen-direction of SGD(lr eta, momentum mu) on the noisy quadratic model is the AR(2) recursion

    x_t = phi_1 x_{t-1} - mu x_{t-2} + eps xi_t,   phi_1 = 1 + mu - eps,   eps = eta h,

whose characteristic roots z_1, z_2 (z^2 - phi_1 z + mu = 0, z_1 z_2 = mu) give every stationary second
moment in closed form through the root sums D_n = (z_1^n - z_2^n) / (z_1 - z_2) = mu^{(n-1)/2}
U_{n-1}(c), c = phi_1 / (2 sqrt(mu)) (U the Chebyshev polynomial of the second kind; D_n is smooth
through the double root). Everything is exact for any mu in [0, 1), not only via eta / (1 - mu).
Arrays broadcast over curvatures (last axis). Derivations: docs/theory.md sec. 9.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from trajlab.theory._validate import (
    decay_value,
    momentum_value,
    nonnegative_array,
    positive_scalar,
    stable_step,
)


def _eps(lr: float, curvatures: ArrayLike, momentum: float, name: str) -> tuple[np.ndarray, float]:
    mu = momentum_value(momentum)
    eps = positive_scalar("lr", lr) * nonnegative_array("curvatures", curvatures)
    stable_step(name, eps, mu)
    return eps, mu


def _lags(name: str, lags: ArrayLike) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(lags))
    if arr.ndim != 1 or np.any(arr < 0) or np.any(arr != np.round(arr)):
        raise ValueError(f"{name} must be whole numbers of steps >= 0, got {arr[:5].tolist()}")
    return arr.astype(np.int64)


def _sinhc(x: np.ndarray) -> np.ndarray:
    safe = np.where(x < 1e-8, 1.0, x)
    return np.where(x < 1e-8, 1.0, np.sinh(safe) / safe)


def root_sums(n: ArrayLike, eps: np.ndarray, momentum: float) -> np.ndarray:
    """D_n = (z_1^n - z_2^n) / (z_1 - z_2) for integer n >= 0 (rows) and each eps (columns).

    D_0 = 0, D_1 = 1, D_{n+1} = phi_1 D_n - mu D_{n-1}; closed form mu^{(n-1)/2} U_{n-1}(c) with
    c = phi_1 / (2 sqrt(mu)): sin(n th) / sin(th) (th = arccos |c|) for |c| <= 1 (complex roots, the
    oscillating regime eps > (1 - sqrt(mu))^2), sinh(n d) / sinh(d) (d = arccosh |c|) otherwise, with the
    sign (-1)^{n-1} for c < 0. Evaluated in log space, so n up to 1e9 neither overflows nor cancels.
    """
    n = np.asarray(n, dtype=np.float64)[..., None]
    eps = np.asarray(eps, dtype=np.float64)
    phi = 1.0 + momentum - eps
    if momentum == 0.0:
        with np.errstate(divide="ignore"):
            return np.where(n >= 1, np.sign(phi) ** (n - 1) * np.abs(phi) ** np.maximum(n - 1, 0), 0.0)
    root = np.sqrt(momentum)
    c = phi / (2.0 * root)
    sign = np.where((c < 0) & (np.mod(n - 1, 2) == 1), -1.0, 1.0)
    ac = np.abs(c)
    theta = np.arccos(np.minimum(ac, 1.0))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        osc = n * np.sinc(n * theta / np.pi) / np.sinc(theta / np.pi) * root ** (n - 1)
        d = np.arccosh(np.maximum(ac, 1.0))
        small = n * d < 1.0
        grow = np.exp((n - 1) * (np.log(root) + d) + d)
        decay = np.exp((n - 1) * (np.log(root) - d) - d)
        real = np.where(
            small, n * _sinhc(n * d) / _sinhc(d) * root ** (n - 1), (grow - decay) / (2 * np.sinh(d))
        )
    out = np.where(ac <= 1.0, osc, real) * sign
    return np.where(n >= 1, out, 0.0)


def stationary_factor(lr: float, curvatures: ArrayLike, momentum: float = 0.0) -> np.ndarray:
    """f = gamma_0 / s^2 = (1 + mu) eps / ((1 - mu)(2 (1 + mu) - eps)): stationary variance per unit noise."""
    eps, mu = _eps(lr, curvatures, momentum, "stationary_factor")
    return (1.0 + mu) * eps / ((1.0 - mu) * (2.0 * (1.0 + mu) - eps))


def autocorrelation(lags: ArrayLike, lr: float, curvatures: ArrayLike, momentum: float = 0.0) -> np.ndarray:
    """Stationary rho_k = gamma_k / gamma_0 = (D_{k+1} - mu^2 D_{k-1}) / (1 + mu), shape (lags, d).

    For mu = 0 it is (1 - eps)^k. With momentum it decays as |z_1|^k: for eps below (1 - sqrt(mu))^2
    the slow root is ~ 1 - eps / (1 - mu) (time constant (1 - mu) / eps); above it the roots are complex
    with modulus sqrt(mu), so every such direction forgets in -2 / ln(mu) steps (19 at mu = 0.9) while
    oscillating with period 2 pi / arccos(phi_1 / (2 sqrt(mu))).
    """
    eps, mu = _eps(lr, curvatures, momentum, "autocorrelation")
    k = _lags("lags", lags)
    rho = (root_sums(k + 1, eps, mu) - mu**2 * root_sums(np.maximum(k - 1, 0), eps, mu)) / (1.0 + mu)
    # D_{-1} = -1 / mu makes rho_0 = 1; set it directly (the formula above used D_0 = 0 there).
    rho[k == 0] = 1.0
    return np.where(eps > 0, rho, 1.0)


def ema_variance_ratio(decay: float, lr: float, curvatures: ArrayLike, momentum: float = 0.0) -> np.ndarray:
    """Var(EMA_beta of x) / Var(x) at stationarity, exact: (1 - beta)/(1 + beta) (2 P(beta) - 1).

    P(b) = sum_k rho_k b^k = (1 - phi_1 mu b / (1 + mu)) / (1 - phi_1 b + mu b^2) is the generating
    function of the autocorrelation. For mu = 0 this is (1 - beta)(1 + a beta) / ((1 + beta)(1 - a beta));
    for eps, 1 - beta << 1 - mu it is 1 / (1 + tau_e / tau) with tau = (1 - mu) / eps, tau_e = 1/(1-beta).
    """
    beta = decay_value(decay)
    eps, mu = _eps(lr, curvatures, momentum, "ema_variance_ratio")
    phi = 1.0 + mu - eps
    gen = (1.0 - phi * mu * beta / (1.0 + mu)) / (1.0 - phi * beta + mu * beta**2)
    return np.where(eps > 0, (1.0 - beta) / (1.0 + beta) * (2.0 * gen - 1.0), 1.0)


def two_point_variance_ratio(
    gaps: ArrayLike, lr: float, curvatures: ArrayLike, momentum: float = 0.0
) -> np.ndarray:
    """Var((x_t + x_{t-k}) / 2) / Var(x) = (1 + rho_k) / 2, shape (gaps, d)."""
    return 0.5 * (1.0 + autocorrelation(gaps, lr, curvatures, momentum))


def kernel_variance_ratio(
    weights: ArrayLike, lr: float, curvatures: ArrayLike, momentum: float = 0.0
) -> np.ndarray:
    """Var(sum_j w_j x_{t-T+j}) / Var(x) for any kernel w_0..w_T (sum 1) = a_0 + 2 sum_{k>=1} a_k rho_k.

    a_k = sum_j w_j w_{j+k} is the kernel's own autocorrelation (FFT, O(T log T)); rho_k comes from the
    closed form, so the cost is O(T d) with no recursion.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0 or not np.all(np.isfinite(w)):
        raise ValueError("weights must be a non-empty finite 1-d array w_0..w_T (oldest iterate first)")
    if abs(w.sum() - 1.0) > 1e-8:
        raise ValueError(f"weights must sum to 1 (an average of iterates), got sum {w.sum():.12g}")
    size = 1 << int(np.ceil(np.log2(2 * w.size)))
    spec = np.fft.rfft(w, size)
    a = np.fft.irfft(spec * np.conj(spec), size)[: w.size]
    rho = autocorrelation(np.arange(w.size), lr, curvatures, momentum)
    return a[0] * rho[0] + 2.0 * a[1:] @ rho[1:]


def equivalent_lr_for_ratio(
    ratios: ArrayLike, lr: float, curvatures: ArrayLike, momentum: float = 0.0
) -> np.ndarray:
    """Per curvature, the constant lr whose stationary variance is ``ratio`` times that at ``lr``.

    Inverts f(eps') = R f(eps): with K = R f(eps) (1 - mu) / (1 + mu), eps' = 2 (1 + mu) K / (1 + K)
    (nan where h = 0). For small eps, eta' = R eta.
    """
    eps, mu = _eps(lr, curvatures, momentum, "equivalent_lr_for_ratio")
    ratio = np.asarray(ratios, dtype=np.float64)
    if np.any(ratio < 0):
        raise ValueError("variance ratios must be >= 0")
    f = (1.0 + mu) * eps / ((1.0 - mu) * (2.0 * (1.0 + mu) - eps))
    k = ratio * f * (1.0 - mu) / (1.0 + mu)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(eps > 0, 2.0 * (1.0 + mu) * k / (1.0 + k) / (eps / lr), np.nan)


def companion_power(n: ArrayLike, eps: np.ndarray, momentum: float) -> np.ndarray:
    """F^n = D_n F - mu D_{n-1} I for F = [[phi_1, -mu], [1, 0]] (Cayley-Hamilton), shape (n, d, 2, 2)."""
    n = np.asarray(n, dtype=np.int64)
    d_n = root_sums(n, eps, momentum)
    d_prev = np.where(
        (n >= 1)[:, None], root_sums(np.maximum(n - 1, 0), eps, momentum), -1.0 / max(momentum, 1e-300)
    )
    phi = 1.0 + momentum - eps
    out = np.empty((*d_n.shape, 2, 2))
    out[..., 0, 0] = d_n * phi - momentum * d_prev
    out[..., 0, 1] = -momentum * d_n
    out[..., 1, 0] = d_n
    out[..., 1, 1] = -momentum * d_prev
    if momentum == 0.0:  # D_{n-1} = a^{n-2} is not defined at n = 1: F^n = [[a^n, 0], [a^{n-1}, 0]]
        out[..., 0, 0] = np.where(n[:, None] >= 1, d_n * phi, 1.0)
        out[..., 1, 1] = np.where(n[:, None] >= 1, 0.0, 1.0)
    return out


def _state_cov(eps: np.ndarray, mu: float) -> np.ndarray:
    """Stationary Cov(x_t, x_{t-1}) per unit s^2, (d, 2, 2): gamma_0 = f, gamma_1 = phi_1 f / (1 + mu)."""
    g0 = (1.0 + mu) * eps / ((1.0 - mu) * (2.0 * (1.0 + mu) - eps))
    g1 = (1.0 + mu - eps) * g0 / (1.0 + mu)
    return np.stack([np.stack([g0, g1], -1), np.stack([g1, g0], -1)], -2)


def lr_drop_variance_ratio(
    ages: ArrayLike,
    lr: float,
    new_lr: float,
    curvatures: ArrayLike,
    momentum: float = 0.0,
    rescale_velocity: bool = True,
) -> np.ndarray:
    """Var(x) ``ages`` steps after the lr changes from a stationary run at ``lr`` to ``new_lr``, / Var at lr.

    S_a = S'_inf + F'^a (S_0 - S'_inf) F'^{aT} for the state z = (x_t, x_{t-1}), with F'^a in closed form
    (``companion_power``). PyTorch's SGD keeps the velocity buffer v (theta -= lr v), so at the switch
    the step theta_t - theta_{t-1} is rescaled by r = new_lr / lr: the new recursion starts from the
    virtual previous iterate (1 - r) x_0 + r x_{-1} (``rescale_velocity=False``: the step is kept).

    Returns:
        shape (ages, d); 1 at age 0, tending to f(new_lr h) / f(lr h) (~ new_lr / lr for small eps).
    """
    eps, mu = _eps(lr, curvatures, momentum, "lr_drop_variance_ratio")
    new_eps, _ = _eps(new_lr, curvatures, momentum, "lr_drop_variance_ratio (new lr)")
    k = _lags("ages", ages)
    r = new_lr / lr if rescale_velocity else 1.0
    mix = np.array([[1.0, 0.0], [1.0 - r, r]])
    start = mix @ _state_cov(eps, mu) @ mix.T
    delta = start - _state_cov(new_eps, mu)
    power = companion_power(k, new_eps, mu)
    moved = power @ delta @ np.swapaxes(power, -1, -2)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (_state_cov(new_eps, mu)[:, 0, 0] + moved[..., 0, 0]) / _state_cov(eps, mu)[:, 0, 0]
    return np.where(eps > 0, ratio, 1.0)


def schedule_variance_ratio(
    lrs: ArrayLike, lr: float, curvatures: ArrayLike, momentum: float = 0.0
) -> np.ndarray:
    """Var(x) after the schedule ``lrs`` (one lr per step) from a stationary run at ``lr``, / Var at lr.

    The state covariance S_t of z = (x_t, x_{t-1}) (per unit s^2) runs the recursion of PyTorch's SGD,
    whose velocity buffer makes the step theta_t - theta_{t-1} scale with r_t = lr_t / lr_{t-1}:

        x_{t+1} = (1 + mu r_t - eps_t) x_t - mu r_t x_{t-1} + eps_t xi_t,   eps_t = lr_t h,

    O(T d). A constant ``new_lr`` schedule gives :func:`lr_drop_variance_ratio` at age T; a step at lr 0
    leaves the iterate in place and drops the velocity (so lr 0 belongs at the end only). Use it to set a
    cooldown (e.g. linear to 0) beside an average of the constant-lr run (:func:`ema_variance_ratio`,
    :func:`kernel_variance_ratio`): both are variance ratios against the same stationary state.
    """
    eps0, mu = _eps(lr, curvatures, momentum, "schedule_variance_ratio")
    schedule = nonnegative_array("lrs", lrs)
    h = eps0 / lr
    cov = _state_cov(eps0, mu)
    a, b, c = cov[:, 0, 0].copy(), cov[:, 0, 1].copy(), cov[:, 1, 1].copy()  # Var x_t, Cov, Var x_{t-1}
    previous = lr
    for eta in schedule:
        r = eta / previous if previous > 0 else 0.0
        eps = eta * h
        p, q = 1.0 + mu * r - eps, -mu * r
        a, b, c = p * p * a + 2 * p * q * b + q * q * c + eps * eps, p * a + q * b, a
        previous = eta
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(eps0 > 0, a / cov[:, 0, 0], 1.0)


def relaxation_steps(lr: float, curvatures: np.ndarray, momentum: float) -> np.ndarray:
    """-1 / ln max|z| of the heavy-ball roots: the e-folding time of the slowest mode, in steps."""
    eps = lr * np.asarray(curvatures, dtype=np.float64)
    phi = (1.0 + momentum - eps).astype(complex)
    disc = np.sqrt(phi**2 - 4.0 * momentum)
    modulus = np.maximum(np.abs(0.5 * (phi + disc)), np.abs(0.5 * (phi - disc)))
    with np.errstate(divide="ignore"):
        return np.where(modulus < 1.0, -1.0 / np.log(np.maximum(modulus, 1e-300)), np.inf)
