"""Batched small-matrix algebra for the per-direction linear recursions of the noisy quadratic model.

Every eigen-direction of SGD with heavy-ball momentum is the linear Gaussian recursion

    z_t = F z_{t-1} + b xi_t,   z_t = (x_t, x_{t-1}),   F = [[1 + mu - eps, -mu], [1, 0]],   b = (eps, 0),

with x_t = delta_t the displacement from the full-batch minimum and xi_t the per-batch minimum's
displacement (variance s^2). All arrays carry a leading axis over directions, shape (d, k, k) for
matrices and (d, k) for vectors, so every closed form is exact for momentum and still vectorised.
"""

from __future__ import annotations

import numpy as np


def transition(eps: np.ndarray, momentum: float) -> tuple[np.ndarray, np.ndarray]:
    """Return F (d, 2, 2) and the noise input b (d, 2) of the heavy-ball recursion."""
    d = eps.shape[0]
    f = np.zeros((d, 2, 2))
    f[:, 0, 0] = 1.0 + momentum - eps
    f[:, 0, 1] = -momentum
    f[:, 1, 0] = 1.0
    b = np.zeros((d, 2))
    b[:, 0] = eps
    return f, b


def averaged_transition(
    f: np.ndarray, b: np.ndarray, decay: float, gain: float
) -> tuple[np.ndarray, np.ndarray]:
    """Augment the state with an accumulator acc_t = decay * acc_{t-1} + gain * x_t.

    decay = beta, gain = 1 - beta is an EMA; decay = gain = 1 is a running sum (SWA). Returns the
    (d, 3, 3) transition and (d, 3) noise input of (x_t, x_{t-1}, acc_t).
    """
    d = f.shape[0]
    g = np.zeros((d, 3, 3))
    g[:, :2, :2] = f
    g[:, 2, :2] = gain * f[:, 0, :]
    g[:, 2, 2] = decay
    c = np.zeros((d, 3))
    c[:, :2] = b
    c[:, 2] = gain * b[:, 0]
    return g, c


def _sandwich(a: np.ndarray, s: np.ndarray) -> np.ndarray:
    """A S A^T for stacks of matrices."""
    return a @ s @ np.swapaxes(a, -1, -2)


def power_and_gramian(g: np.ndarray, c_outer: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (G^n, sum_{k<n} G^k C G^{kT}) by binary doubling in O(log n) batched products.

    Uses G^{p+r} = G^p G^r and W_{p+r} = W_r + G^r W_p G^{rT}, where W_n is the partial sum.
    """
    eye = np.broadcast_to(np.eye(g.shape[-1]), g.shape).copy()
    result_pow, result_sum = eye, np.zeros_like(g)
    block_pow, block_sum = g.copy(), c_outer.copy()
    n = int(steps)
    while n > 0:
        if n & 1:
            result_sum = result_sum + _sandwich(result_pow, block_sum)
            result_pow = block_pow @ result_pow
        n >>= 1
        if n:
            block_sum = block_sum + _sandwich(block_pow, block_sum)
            block_pow = block_pow @ block_pow
    return result_pow, result_sum


def propagate(
    g: np.ndarray, c: np.ndarray, noise_var: np.ndarray, mean: np.ndarray, cov: np.ndarray, steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the state after ``steps`` steps: m_n = G^n m_0, S_n = G^n S_0 G^nT + W_n."""
    c_outer = noise_var[:, None, None] * c[:, :, None] * c[:, None, :]
    g_pow, gram = power_and_gramian(g, c_outer, steps)
    return (g_pow @ mean[:, :, None])[:, :, 0], _sandwich(g_pow, cov) + gram


def lyapunov(g: np.ndarray, c: np.ndarray, noise_var: np.ndarray) -> np.ndarray:
    """Stationary covariance S = G S G^T + s^2 c c^T, solved as (I - G kron G) vec S = vec C."""
    d, k, _ = g.shape
    kron = np.einsum("nij,nkl->nikjl", g, g).reshape(d, k * k, k * k)
    rhs = (noise_var[:, None, None] * c[:, :, None] * c[:, None, :]).reshape(d, k * k, 1)
    sol = np.linalg.solve(np.eye(k * k)[None] - kron, rhs)
    s = sol.reshape(d, k, k)
    return 0.5 * (s + np.swapaxes(s, -1, -2))


def weighted_moments(
    f: np.ndarray,
    b: np.ndarray,
    noise_var: np.ndarray,
    weights: np.ndarray,
    mean0: np.ndarray,
    cov0: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of A = sum_j w_j x_j for j = 0..T, any weights, from z_0 ~ (mean0, cov0).

    Writes A = q_0 z_0 + sum_{m>=1} (q_m b) xi_m with q_m = sum_{j>=m} w_j e1^T F^{j-m}, computed by the
    backward recursion q_m = w_m e1^T + q_{m+1} F. Runs of zero weights are jumped in O(log gap) with
    power_and_gramian, so sparse kernels (TwoPoint, MultiPoint) cost O(points log T) and dense ones O(T).
    """
    d = f.shape[0]
    support = np.flatnonzero(weights)
    b_outer = b[:, :, None] * b[:, None, :]
    q = np.zeros((d, 2))
    noise = np.zeros(d)
    position = None
    for j in support[::-1]:
        if position is not None:
            gap = position - j - 1
            if gap > 0:
                # q F^k b for k = 1..gap are the noise coefficients of steps position-1 .. j+1.
                f_pow, gram = power_and_gramian(f, b_outer, gap)
                qf = np.einsum("ni,nij->nj", q, f)
                noise += noise_var * np.einsum("ni,nij,nj->n", qf, gram, qf)
                q = np.einsum("ni,nij->nj", q, f_pow)
            q = np.einsum("ni,nij->nj", q, f)
        q[:, 0] += weights[j]
        if j >= 1:
            noise += noise_var * np.einsum("ni,ni->n", q, b) ** 2
        position = j
    if position is None:
        return np.zeros(d), np.zeros(d)
    if position > 0:
        if position > 1:
            f_pow, gram = power_and_gramian(f, b_outer, position - 1)
            qf = np.einsum("ni,nij->nj", q, f)
            noise += noise_var * np.einsum("ni,nij,nj->n", qf, gram, qf)
            q = np.einsum("ni,nij->nj", q, f_pow)
        q = np.einsum("ni,nij->nj", q, f)
    mean = np.einsum("ni,ni->n", q, mean0)
    var = noise + np.einsum("ni,nij,nj->n", q, cov0, q)
    return mean, var
