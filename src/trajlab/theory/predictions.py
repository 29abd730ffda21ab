"""Predictions of the noisy quadratic model: what averaging buys and which lr it is worth.

All functions take a NoisyQuadratic and return plain dicts of numpy arrays / floats, ready for
``trajlab.reports.theory_plots`` and for JSON (see ``trajlab.commands.theory``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from trajlab.theory._rules import RuleSpec
from trajlab.theory._validate import decay_value, gap_value, nonnegative_array, stable_step, steps_value
from trajlab.theory.nqm import NoisyQuadratic


def two_point_gain(model: NoisyQuadratic, gaps: Sequence[int]) -> dict:
    """Stationary excess loss of 1/2 (theta_t + theta_{t-k}) against the gap k.

    Per direction Var = v (1 + a^k) / 2 (mu = 0; exact 2x2 form with momentum), so the loss falls from
    the SGD loss at k = 0 towards half of it once k >> tau_i = 1/(eta h_i), and each direction switches on
    at its own gap (the multi-timescale effect). ``half_lr_excess_loss`` is SGD at lr / 2 for comparison.
    """
    gaps = [gap_value("gap", k) for k in gaps]
    losses = np.array([model.excess_loss(RuleSpec("two_point", gap=k, points=2)) for k in gaps])
    sgd = model.excess_loss()
    return {
        "gaps": np.asarray(gaps),
        "excess_loss": losses,
        "sgd_excess_loss": sgd,
        "half_lr_excess_loss": model.with_lr(model.lr / 2).excess_loss(),
        "ratio": losses / sgd if sgd > 0 else np.full(len(gaps), np.nan),
    }


def _ema_loss(model: NoisyQuadratic, decay: float, horizon: int, start, start_variance) -> float:
    m, v = model.moments_at(horizon, start, start_variance, RuleSpec("ema", decay=decay))
    return float(0.5 * np.sum(model.curvatures * (m**2 + v)))


def best_ema_decay(
    model: NoisyQuadratic,
    horizon_steps: int,
    start: ArrayLike,
    start_variance: ArrayLike = 0.0,
    decays: ArrayLike | None = None,
) -> dict:
    """The EMA decay beta minimising the expected excess loss of the EMA at ``horizon_steps``.

    A long EMA removes noise (variance ~ v / (1 + eta h tau_e)) but remembers the start (bias ~ beta^t
    x_0), so from a displaced start there is an optimum. The loss is evaluated exactly with the 3x3
    moment recursion on a log grid of 1 - beta, then refined by golden-section search in log(1 - beta).

    Returns:
        dict with ``decays``, ``excess_loss`` on the grid, ``best_decay``, ``best_excess_loss`` and the
        ``sgd_excess_loss`` of the last iterate at the horizon.
    """
    horizon = steps_value("horizon_steps", horizon_steps, minimum=1)
    if decays is None:
        decays = 1.0 - np.geomspace(0.5, 0.1 / horizon, 40)
    decays = np.asarray([decay_value(b) for b in np.atleast_1d(decays)])
    losses = np.array([_ema_loss(model, b, horizon, start, start_variance) for b in decays])
    best = int(np.argmin(losses))
    lo = np.log(1.0 - decays[min(best + 1, decays.size - 1)])
    hi = np.log(1.0 - decays[max(best - 1, 0)])
    lo, hi = min(lo, hi), max(lo, hi)
    golden = (np.sqrt(5.0) - 1.0) / 2.0

    def loss_at(u: float) -> float:
        return _ema_loss(model, 1.0 - np.exp(u), horizon, start, start_variance)

    for _ in range(40 if hi > lo else 0):
        u1, u2 = hi - golden * (hi - lo), lo + golden * (hi - lo)
        if loss_at(u1) < loss_at(u2):
            hi = u2
        else:
            lo = u1
    best_decay = float(1.0 - np.exp(0.5 * (lo + hi))) if hi > lo else float(decays[best])
    best_loss = _ema_loss(model, best_decay, horizon, start, start_variance)
    if losses[best] < best_loss:
        best_decay, best_loss = float(decays[best]), float(losses[best])
    return {
        "decays": decays,
        "excess_loss": losses,
        "best_decay": best_decay,
        "best_excess_loss": best_loss,
        "sgd_excess_loss": float(model.excess_loss_at([horizon], start, start_variance)[0]),
    }


def schedule_excess_loss(
    model: NoisyQuadratic,
    lrs: ArrayLike,
    start: ArrayLike,
    start_variance: ArrayLike = 0.0,
    record_steps: Sequence[int] | None = None,
) -> np.ndarray:
    """Exact expected excess loss of SGD (model's curvatures, noise, momentum) on a schedule ``lrs``.

    Runs the moment recursion m_t = F_t m_{t-1}, S_t = F_t S_{t-1} F_t^T + s^2 b_t b_t^T step by step,
    vectorised over directions (O(T d)). Returns the loss at ``record_steps`` (default every step 0..T).
    """
    lrs = np.asarray(lrs, dtype=np.float64)
    steps = lrs.size
    stable_step("schedule_excess_loss", np.outer(model.curvatures, lrs), model.momentum)
    record = np.arange(steps + 1) if record_steps is None else np.asarray(record_steps)
    d, mu, h = model.dim, model.momentum, model.curvatures
    mean = np.broadcast_to(np.asarray(start, dtype=np.float64), (d,))
    var0 = np.broadcast_to(nonnegative_array("start_variance", start_variance), (d,))
    m = np.stack([mean, mean])  # (x_t, x_{t-1}) means, shape (2, d)
    s00, s01, s11 = var0.copy(), var0.copy(), var0.copy()
    wanted = set(int(r) for r in record)
    out = {}
    if 0 in wanted:
        out[0] = 0.5 * np.sum(h * (m[0] ** 2 + s00))
    for t in range(1, steps + 1):
        eps = lrs[t - 1] * h
        phi = 1.0 + mu - eps
        m = np.stack([phi * m[0] - mu * m[1], m[0]])
        n00 = phi * phi * s00 - 2 * phi * mu * s01 + mu * mu * s11 + eps * eps * model.noise
        n01 = phi * s00 - mu * s01
        s00, s01, s11 = n00, n01, s00
        if t in wanted:
            out[t] = 0.5 * np.sum(h * (m[0] ** 2 + s00))
    return np.array([out[int(r)] for r in record])


def ema_vs_reduced_lr(
    model: NoisyQuadratic,
    decay: float,
    steps: int,
    start: ArrayLike,
    curvature: float | None = None,
    num_points: int = 60,
) -> dict:
    """Excess loss over time of the EMA(decay) of an SGD(lr) run vs SGD at the reduced lr.

    The paper's reduced lr is eta' = eta / (1 + eta h tau_e), tau_e = 1 / (1 - beta), for an effective
    curvature h (default: the model's loss-weighted mean curvature sum h^2 v / sum h v). With heavy-ball
    momentum mu the formula holds for the effective lr eta / (1 - mu) (both runs keep mu), so
    eta' = eta / (1 + eta h tau_e / (1 - mu)); at mu = 0 it is the paper's. ``matched_lr`` is the constant
    lr whose stationary excess loss equals the EMA's (bisection), for comparison.
    """
    beta = decay_value(decay)
    steps = steps_value("steps", steps, minimum=1)
    record = np.unique(np.linspace(0, steps, num_points).astype(int))
    rule = RuleSpec("ema", decay=beta)
    v = model.stationary_variance()
    h = model.curvatures
    if curvature is None:
        curvature = float(np.sum(h * h * v) / np.sum(h * v)) if np.sum(h * v) > 0 else float(np.max(h))
    paper_lr = model.lr / (1.0 + model.lr / (1.0 - model.momentum) * curvature / (1.0 - beta))
    target = model.excess_loss(rule)
    lo, hi = 0.0, model.lr
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if model.with_lr(mid).excess_loss() < target else (lo, mid)
    matched_lr = 0.5 * (lo + hi)
    return {
        "steps": record,
        "ema": model.excess_loss_at(record, start, rule=rule),
        "sgd": model.excess_loss_at(record, start),
        "reduced_lr": paper_lr,
        "reduced_lr_curve": model.with_lr(paper_lr).excess_loss_at(record, start),
        "matched_lr": matched_lr,
        "matched_lr_curve": model.with_lr(matched_lr).excess_loss_at(record, start),
        "curvature": float(curvature),
    }


def swa_vs_cooldown(
    model: NoisyQuadratic,
    start_step: int,
    steps: int,
    start: ArrayLike,
    curvature: float | None = None,
    num_points: int = 60,
) -> dict:
    """SWA (uniform average of iterates start_step..t) vs SGD with a 1/t cooldown from start_step.

    The cooldown is eta_t = eta / (1 + eta h (t - t_0)) for t > t_0 (constant eta before), the Polyak
    1/t decay that the exact map assigns to SWA in the isotropic model (paper.md sec. 3); h defaults to
    the model's mean curvature. With momentum mu, eta is the effective lr eta / (1 - mu) in the time
    scale: eta_t = eta / (1 + eta h (t - t_0) / (1 - mu)).
    """
    start_step = steps_value("start_step", start_step)
    steps = steps_value("steps", steps, minimum=start_step + 1)
    h = float(np.mean(model.curvatures)) if curvature is None else float(curvature)
    t = np.arange(1, steps + 1)
    rate = model.lr * h / (1.0 - model.momentum)  # 1 / (time scale of the cooldown, in steps)
    lrs = np.where(t > start_step, model.lr / (1.0 + rate * (t - start_step)), model.lr)
    record = np.unique(np.linspace(0, steps, num_points).astype(int))
    rule = RuleSpec("swa", start_step=start_step)
    return {
        "steps": record,
        "swa": model.excess_loss_at(record, start, rule=rule),
        "sgd": model.excess_loss_at(record, start),
        "cooldown": schedule_excess_loss(model, lrs, start, record_steps=record),
        "cooldown_lrs": lrs,
        "start_step": start_step,
        "curvature": h,
    }
