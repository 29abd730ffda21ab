"""Exact, vectorised Monte-Carlo simulator of SGD (with heavy-ball momentum) on the noisy quadratic model.

Every eigen-direction runs its own recursion x_t = (1 + mu - eps) x_{t-1} - mu x_{t-2} + eps xi_t in
float64, vectorised over (seeds, directions). Steps are processed in chunks: noise for a chunk is drawn
at once, the recursion runs step by step on (seeds, d) arrays in place, and every statistic (second
moments, lagged products, averaged iterates) is reduced over the chunk with array operations, so only
O(chunk + longest lag) iterates are ever held. Statistics are collected in time blocks for batch-means
standard errors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from trajlab.theory._rules import RuleSpec, describe_rule
from trajlab.theory._validate import steps_value
from trajlab.theory.nqm import NoisyQuadratic

logger = logging.getLogger(__name__)

_NOISE_KINDS = ("gaussian", "rademacher")


def _draw(rng: np.random.Generator, shape: tuple[int, ...], kind: str) -> np.ndarray:
    # Rademacher (+-1) noise has the same first two moments as N(0, 1) and is ~10x cheaper to draw;
    # every closed form here is a second-moment statement, so both give the same expectations.
    if kind == "gaussian":
        return rng.standard_normal(shape)
    bits = np.unpackbits(np.frombuffer(rng.bytes(-(-int(np.prod(shape)) // 8)), dtype=np.uint8))
    return bits[: int(np.prod(shape))].reshape(shape).astype(np.float64) * 2.0 - 1.0


def _named_rules(rules: Any) -> dict[str, RuleSpec]:
    if rules is None:
        return {}
    if isinstance(rules, Mapping):
        return {str(k): describe_rule(v) for k, v in rules.items()}
    out = {}
    for rule in rules:
        name = type(rule).__name__
        out[name if name not in out else f"{name}_{len(out)}"] = describe_rule(rule)
    return out


def _stationary_start(model: NoisyQuadratic, shape: tuple[int, int], rng: np.random.Generator) -> tuple:
    # Draw (x_0, x_{-1}) from the exact stationary 2x2 covariance so no burn-in is needed for SGD itself.
    cov = model._stationary_state_cov()
    g0, g1 = cov[:, 0, 0], cov[:, 0, 1]
    z1, z2 = rng.standard_normal(shape), rng.standard_normal(shape)
    x0 = np.sqrt(g0) * z1
    rho = np.divide(g1, g0, out=np.zeros_like(g0), where=g0 > 0)
    x_prev = rho * x0 + np.sqrt(np.maximum(g0 * (1 - rho**2), 0.0)) * z2
    return x0, x_prev


def simulate(
    model: NoisyQuadratic,
    steps: int,
    seeds: int = 1,
    rules: Any = None,
    start: ArrayLike | None = None,
    start_previous: ArrayLike | None = None,
    burn_in_steps: int | None = None,
    lags: Sequence[int] = (1,),
    memory_lags: Sequence[int] = (0, 1),
    record_steps: Sequence[int] | None = None,
    seed: int = 0,
    noise: str = "gaussian",
    chunk_steps: int = 1024,
    blocks: int = 20,
) -> dict:
    """Simulate SGD on ``model`` and return the statistics the closed forms predict.

    Stationary mode (``start`` is None): x starts from the exact stationary distribution; after
    ``burn_in_steps`` (default: 10x the longest time scale of the rules, at most steps // 2) it
    time-averages over steps and seeds: the variance per direction, lagged autocovariances, excess loss
    1/2 sum h x^2, the gradient alignment ratio, the used-batch memory, and the variance/excess loss of
    each rule's averaged iterate (EMA, TwoPoint, MultiPoint, windowed SWA, or a fixed weights array).

    From-start mode (``start`` given, x_0 = start, zero velocity): E[x_t^2] over seeds at
    ``record_steps``, and every rule's averaged iterate at the final step (any rule: its weights
    ``rule.weights(steps)`` are applied online).

    Args:
        model: the NoisyQuadratic to simulate (curvatures, noise, lr, momentum).
        steps: number of SGD steps.
        seeds: independent runs, simulated together.
        rules: None, a list of rules, or a dict name -> rule (or weights array).
        start: initial displacement per direction (from-start mode), or None (stationary mode); may be
            (seeds, d) for one start per seed.
        start_previous: the iterate before ``start`` (x_{-1}; from-start mode), default ``start`` (zero
            velocity). A stationary draw with a rescaled step reproduces an lr drop in PyTorch's convention.
        burn_in_steps: steps discarded before averaging (stationary mode).
        lags: lags k of Cov(x_t, x_{t+k}) to estimate.
        memory_lags: lags k of the used-batch memory E[L_{B_t}(theta_{t+k}) - L_{B'}(theta_{t+k})].
        record_steps: steps at which to record E[x_t^2] (from-start mode; default the last step).
        seed: seed of numpy's PCG64 generator (fixed seed, reproducible).
        noise: "gaussian" or "rademacher" (same second moments, much cheaper).
        chunk_steps: steps per chunk (memory ~ (chunk + longest lag) * seeds * d floats).
        blocks: time blocks for the batch-means standard errors.

    Returns:
        A dict of numpy arrays and floats; every estimate ``q`` comes with ``q_se`` where meaningful.
    """
    steps = steps_value("steps", steps, minimum=1)
    seeds = steps_value("seeds", seeds, minimum=1)
    if noise not in _NOISE_KINDS:
        raise ValueError(f"noise must be one of {_NOISE_KINDS}, got {noise!r}")
    specs = _named_rules(rules)
    rng = np.random.default_rng(seed)
    if start is None:
        return _simulate_stationary(
            model, steps, seeds, specs, burn_in_steps, lags, memory_lags, rng, noise, chunk_steps, blocks
        )
    return _simulate_from_start(
        model, steps, seeds, specs, start, start_previous, record_steps, rng, noise, chunk_steps
    )


def _run_chunk(
    model: NoisyQuadratic, x: np.ndarray, x_prev: np.ndarray, xi: np.ndarray, out: np.ndarray
) -> None:
    """Advance (x, x_prev) in place through the chunk's unit noise xi (L, S, d), writing iterates into out.

    out[k] = phi_1 out[k-1] - mu out[k-2] + eps s xi[k], with phi_1 = 1 + mu - eps; the driving term is
    written for the whole chunk first so the per-step work is two in-place ufuncs (three with momentum).
    """
    phi1 = 1.0 + model.momentum - model.eps
    mu = model.momentum
    np.multiply(xi, model.eps * np.sqrt(model.noise), out=out)
    tmp = np.empty_like(x)
    prev, prev2 = x, x_prev
    for k in range(xi.shape[0]):
        np.multiply(prev, phi1, out=tmp)
        out[k] += tmp
        if mu:
            np.multiply(prev2, mu, out=tmp)
            out[k] -= tmp
        prev2, prev = prev, out[k]
    x_prev[...] = prev2
    x[...] = prev


def _simulate_stationary(
    model, steps, seeds, specs, burn_in_steps, lags, memory_lags, rng, noise, chunk_steps, blocks
) -> dict:
    d = model.dim
    for name, spec in specs.items():
        if spec.kind == "swa" and spec.window is None or spec.kind == "weights" and spec.time_steps == 0:
            raise ValueError(
                f"rule {name!r}: stationary simulation needs a fixed kernel (EMA, TwoPoint, MultiPoint, "
                "SWA with window_steps, or a weights array); pass start=... for the from-start mode"
            )
    lags = [steps_value("lag", k) for k in lags]
    memory_lags = [steps_value("memory lag", k) for k in memory_lags]
    max_lag = max([0, *lags, *memory_lags, *(s.time_steps for s in specs.values())])
    if burn_in_steps is None:
        longest = max([max_lag, *(s.time_steps for s in specs.values())])
        burn_in_steps = min(steps // 2, 10 * longest + max_lag)
    burn_in_steps = steps_value("burn_in_steps", burn_in_steps)
    if burn_in_steps < max_lag:
        raise ValueError(f"burn_in_steps={burn_in_steps} must cover the longest lag/window {max_lag}")
    if burn_in_steps >= steps:
        raise ValueError(f"burn_in_steps={burn_in_steps} leaves no steps to average (steps={steps})")
    chunk = max(int(chunk_steps), max_lag, 1)
    measured = steps - burn_in_steps
    blocks = max(1, min(blocks, measured))
    block_of = lambda t: min((t - burn_in_steps) * blocks // measured, blocks - 1)  # noqa: E731

    t_start = time.perf_counter()
    shape = (seeds, d)
    x, x_prev = _stationary_start(model, shape, rng)
    scale = np.sqrt(model.noise)
    # history holds the last max_lag iterates and unit noises before the current chunk: (max_lag, S, d).
    hist_x = np.repeat(x[None], max_lag, axis=0) if max_lag else np.zeros((0, *shape))
    hist_xi = np.zeros((max_lag, *shape))
    ema_state = {n: x.copy() for n, s in specs.items() if s.kind == "ema"}
    sum_x2 = np.zeros((blocks, d))
    sum_lag = {k: np.zeros(d) for k in lags}
    sum_mem = {k: np.zeros(d) for k in memory_lags}
    align = np.zeros((3, d))  # per-direction sums over time of x^2, x xi_next, xi_next^2
    rule_x2 = {n: np.zeros((blocks, d)) for n in specs}
    counts = np.zeros(blocks)
    h2 = model.curvatures**2
    t = 0
    out = np.empty((chunk, *shape))
    while t < steps:
        length = min(chunk, steps - t)
        xi = _draw(rng, (length, *shape), noise)
        xs = out[:length]
        x_before = x.copy()
        _run_chunk(model, x, x_prev, xi, xs)
        # Rows are steps t+1..t+length; full arrays prepend the history for lagged products.
        full_x = np.concatenate([hist_x, xs]) if max_lag else xs
        full_xi = np.concatenate([hist_xi, xi]) if max_lag else xi
        averages = _chunk_averages(specs, ema_state, full_x, xs, max_lag)
        first = max(0, burn_in_steps - t)
        if first < length:
            rows = slice(first, length)
            block = block_of(t + 1 + first)
            counts[block] += seeds * (length - first)
            kept = xs[rows]
            sum_x2[block] += np.einsum("lsd,lsd->d", kept, kept)
            for k in lags:
                sum_lag[k] += np.einsum(
                    "lsd,lsd->d", kept, full_x[max_lag + first - k : max_lag + length - k]
                )
            for k in memory_lags:
                sum_mem[k] += np.einsum(
                    "lsd,lsd->d", kept, full_xi[max_lag + first - k : max_lag + length - k]
                )
            # The gradient at theta_s uses the next batch: pair x_s with xi_{s+1} (x_before is theta_t).
            prev_x = np.concatenate([x_before[None], xs[: length - 1]])[rows]
            xi_next = xi[rows]
            align[0] += np.einsum("lsd,lsd->d", prev_x, prev_x)
            align[1] += np.einsum("lsd,lsd->d", prev_x, xi_next) * scale
            align[2] += np.einsum("lsd,lsd->d", xi_next, xi_next) * model.noise
            for name, avg in averages.items():
                rule_x2[name][block] += np.einsum("lsd,lsd->d", avg[rows], avg[rows])
        hist_x = full_x[full_x.shape[0] - max_lag :] if max_lag else hist_x
        hist_xi = full_xi[full_xi.shape[0] - max_lag :] if max_lag else hist_xi
        t += length
    seconds = time.perf_counter() - t_start
    logger.info("simulated %d steps x %d seeds x %d directions in %.2f s", steps, seeds, d, seconds)
    total = counts.sum()
    result = {
        "mode": "stationary",
        "steps": steps,
        "seeds": seeds,
        "burn_in_steps": burn_in_steps,
        "noise": noise,
        "seconds": seconds,
    }
    result.update(_block_stats("", sum_x2, counts, model.curvatures))
    result["autocovariance"] = {k: v / total for k, v in sum_lag.items()}
    result["memory"] = {k: float(-np.sum(model.curvatures * v / total * scale)) for k, v in sum_mem.items()}
    dot, full = np.sum(h2 * (align[0] - align[1])), np.sum(h2 * align[0])
    batch = np.sum(h2 * (align[0] - 2.0 * align[1] + align[2]))
    result["gradient_alignment"] = float(dot / np.sqrt(full * batch))
    result["rules"] = {n: _block_stats("", rule_x2[n], counts, model.curvatures) for n in specs}
    return result


def _block_stats(prefix: str, block_sums: np.ndarray, counts: np.ndarray, h: np.ndarray) -> dict:
    used = counts > 0
    means = block_sums[used] / counts[used, None]
    n = means.shape[0]
    losses = 0.5 * means @ h
    return {
        f"{prefix}variance": means.mean(axis=0) if n else np.zeros(h.size),
        f"{prefix}variance_se": means.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.full(h.size, np.nan),
        f"{prefix}excess_loss": float(losses.mean()),
        f"{prefix}excess_loss_se": float(losses.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
    }


def _chunk_averages(specs: dict, ema_state: dict, full_x: np.ndarray, xs: np.ndarray, max_lag: int) -> dict:
    """Averaged iterates for every chunk row, shape (L, S, d) each; full_x = history (max_lag) + chunk."""
    length = xs.shape[0]
    out = {}
    for name, spec in specs.items():
        if spec.kind == "ema":
            state, beta = ema_state[name], spec.decay
            avg = np.empty_like(xs)
            for k in range(length):
                state *= beta
                state += (1.0 - beta) * xs[k]
                avg[k] = state
            out[name] = avg
            continue
        if spec.kind == "swa":
            # Sliding window mean from a cumulative sum over history + chunk (history >= window rows):
            # window sum at row r = csum[r] - csum[r - n], with csum[-1] = 0 via the zero row in front.
            n = spec.window
            csum = np.concatenate([np.zeros((1, *xs.shape[1:])), np.cumsum(full_x, axis=0)])
            upper = csum[max_lag + 1 : max_lag + 1 + length]
            lower = csum[max_lag + 1 - n : max_lag + 1 - n + length]
            out[name] = (upper - lower) / n
            continue
        kernel = spec.weights(max(spec.time_steps - 1, 2 * spec.gap * spec.points))
        kernel = kernel[kernel.size - max_lag - 1 :] if kernel.size > max_lag + 1 else kernel
        avg = np.zeros_like(xs)
        for offset, w in enumerate(kernel[::-1]):
            if w:
                avg += w * full_x[max_lag - offset : max_lag - offset + length]
        out[name] = avg
    return out


def _simulate_from_start(
    model, steps, seeds, specs, start, start_previous, record_steps, rng, noise, chunk_steps
) -> dict:
    d = model.dim
    shape = (seeds, d)
    x = np.broadcast_to(np.asarray(start, dtype=np.float64), shape).copy()
    x_prev = x.copy() if start_previous is None else np.broadcast_to(start_previous, shape).astype(float)
    record = sorted(
        {steps_value("record step", int(s)) for s in (record_steps if record_steps is not None else [steps])}
    )
    if record and record[-1] > steps:
        raise ValueError(f"record_steps must be <= steps={steps}, got {record[-1]}")
    weights = {n: s.weights(steps) for n, s in specs.items()}
    acc = {n: w[0] * x for n, w in weights.items()}
    recorded = {}
    if 0 in record:
        recorded[0] = (x**2).mean(axis=0)
    t_start = time.perf_counter()
    t = 0
    out = np.empty((chunk_steps, *shape))
    while t < steps:
        length = min(chunk_steps, steps - t)
        xi = _draw(rng, (length, *shape), noise)
        xs = out[:length]
        _run_chunk(model, x, x_prev, xi, xs)
        for n, w in weights.items():
            acc[n] += np.einsum("l,lsd->sd", w[t + 1 : t + length + 1], xs)
        for r in record:
            if t < r <= t + length:
                recorded[r] = (xs[r - t - 1] ** 2).mean(axis=0)
        t += length
    seconds = time.perf_counter() - t_start
    h = model.curvatures
    result = {
        "mode": "from_start",
        "steps": steps,
        "seeds": seeds,
        "noise": noise,
        "seconds": seconds,
        "record_steps": np.asarray(record),
        "second_moment": np.stack([recorded[r] for r in record]),
        "excess_loss": np.asarray([0.5 * np.sum(h * recorded[r]) for r in record]),
        "final": {"mean": x.mean(axis=0), "second_moment": (x**2).mean(axis=0)},
        "rules": {},
    }
    for n, a in acc.items():
        result["rules"][n] = {
            "mean": a.mean(axis=0),
            "second_moment": (a**2).mean(axis=0),
            "excess_loss": float(0.5 * np.sum(h * (a**2).mean(axis=0))),
        }
    return result
