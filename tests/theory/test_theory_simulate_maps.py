"""Simulator vs closed forms (fixed seeds, tolerances from the simulation's standard error) and the maps."""

import numpy as np
import pytest
from standin_rules import EMA, SWA, MultiPoint, PowerEMA, TwoPoint

from trajlab.theory import (
    NoisyQuadratic,
    averaging_for_schedule,
    equivalent_lr,
    equivalent_schedule,
    schedule_error,
    sgd_iterates,
    simulate,
)

# Tolerance: |simulated - closed form| <= 4 standard errors (batch means over 20 time blocks x seeds),
# plus 1e-12 absolute. With fixed seeds the test is deterministic; 4 SE keeps the false-alarm rate
# per comparison below 1e-4 if the seeds are ever changed.
Z = 4.0


@pytest.mark.parametrize("momentum", [0.0, 0.8])
def test_stationary_simulation_matches_closed_forms(momentum):
    m = NoisyQuadratic([0.1, 0.5, 2.0], [1.0, 2.0, 0.5], lr=0.2 * (1 - momentum), momentum=momentum)
    rules = {"ema": EMA(0.9), "two": TwoPoint(15), "multi": MultiPoint(6, 3), "swa": SWA(0, window_steps=20)}
    r = simulate(m, 30_000, seeds=8, rules=rules, lags=(1, 4), memory_lags=(0, 3), seed=1)
    assert np.all(np.abs(r["variance"] - m.stationary_variance()) <= Z * r["variance_se"] + 1e-12)
    assert abs(r["excess_loss"] - m.excess_loss()) <= Z * r["excess_loss_se"]
    for name, rule in rules.items():
        sim = r["rules"][name]
        assert np.all(
            np.abs(sim["variance"] - m.stationary_variance(rule)) <= Z * sim["variance_se"] + 1e-12
        ), name
    # Lagged statistics share the variance's relative standard error (to within a factor ~2).
    rel = np.max(r["variance_se"] / r["variance"])
    for k in (1, 4):
        np.testing.assert_allclose(r["autocovariance"][k], m.autocovariance(k), rtol=2 * Z * rel, atol=1e-3)
    assert r["gradient_alignment"] == pytest.approx(m.gradient_alignment(), rel=2 * Z * rel)
    np.testing.assert_allclose([r["memory"][0], r["memory"][3]], m.batch_memory([0, 3]), rtol=0.1)


def test_from_start_simulation_matches_over_time_forms():
    m = NoisyQuadratic([0.05, 0.4, 1.5], [1.0, 1.0, 2.0], lr=0.1, momentum=0.5)
    start = np.array([3.0, -2.0, 1.0])
    rules = {"ema": EMA(0.95), "power": PowerEMA(1.0), "two": TwoPoint(40)}
    seeds, steps = 4000, 150
    r = simulate(m, steps, seeds=seeds, rules=rules, start=start, record_steps=[10, steps], seed=2)
    for i, t in enumerate([10, steps]):
        mean, var = m.moments_at(t, start)
        # E[x^2] = mean^2 + var; its SE over seeds is sqrt(Var(x^2) / S), Var(x^2) = 2 var^2 + 4 mean^2 var
        se = np.sqrt((2 * var**2 + 4 * mean**2 * var) / seeds)
        assert np.all(np.abs(r["second_moment"][i] - (mean**2 + var)) <= Z * se)
    for name, rule in rules.items():
        mean, var = m.moments_at(steps, start, rule=rule)
        se = np.sqrt((2 * var**2 + 4 * mean**2 * var) / seeds)
        assert np.all(np.abs(r["rules"][name]["second_moment"] - (mean**2 + var)) <= Z * se), name


def test_two_point_at_large_gap_is_sgd_at_half_lr():
    lr, h = 0.02, 1.0
    m = NoisyQuadratic(np.full(4, h), 1.0, lr=lr)
    gap = 5000  # >> 1 / (lr h) = 50 steps
    rule = TwoPoint(gap)
    half = m.with_lr(lr / 2).excess_loss()
    # Closed form: ratio (2 - eps) / (2 - eps / 2), i.e. equal to SGD at lr/2 up to eps / 4 = 0.5%.
    assert m.excess_loss(rule) == pytest.approx(half, rel=lr * h / 2)
    assert equivalent_lr(rule, lr, h) == pytest.approx(lr / 2, rel=lr * h / 2)
    r = simulate(m, 60_000, seeds=4, rules={"two": rule}, burn_in_steps=gap, seed=3, noise="rademacher")
    sim = r["rules"]["two"]
    assert abs(sim["excess_loss"] - half) <= Z * sim["excess_loss_se"] + lr * h / 2 * half


@pytest.mark.parametrize("rule", [EMA(0.995), SWA(start_step=300), SWA(100, window_steps=250), TwoPoint(400)])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_equivalent_schedule_reproduces_average_exactly(rule, momentum):
    rng = np.random.default_rng(4)
    steps, h, lr = 1500, 0.5, 0.1 * (1 - momentum)
    minima = rng.standard_normal((steps, 16))
    start = 3.0 * rng.standard_normal(16)
    averaged = rule.weights(steps) @ sgd_iterates(lr, h, minima, start, momentum)
    lrs = equivalent_schedule(rule, lr, h, steps, momentum)
    last = sgd_iterates(lrs, h, minima, start)[-1]
    assert np.linalg.norm(last - averaged) <= 1e-10 * np.linalg.norm(averaged)


@pytest.mark.parametrize("rule", [EMA(0.99), SWA(start_step=200), TwoPoint(100)])
def test_inverse_map_round_trips(rule):
    steps, h, lr = 800, 0.5, 0.1
    lrs = equivalent_schedule(rule, lr, h, steps)
    np.testing.assert_allclose(averaging_for_schedule(lrs, h, lr), rule.weights(steps), atol=1e-12)
    # And a cooldown -> weights -> the same cooldown.
    cooldown = lr / (1 + lr * h * np.arange(steps))
    w = averaging_for_schedule(cooldown, h, lr)
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(equivalent_schedule(w, lr, h, steps), cooldown, rtol=1e-9)


def test_ema_schedule_limits_and_spectrum_error():
    lr, h, beta, steps = 0.1, 0.5, 0.999, 4000
    lrs = equivalent_schedule(EMA(beta), lr, h, steps)
    assert lrs[-1] == pytest.approx(lr * (1 - beta), rel=1e-9)  # ends at eta (1 - beta)
    assert lrs[steps // 2] == pytest.approx((1 - beta) / h, rel=0.05)  # beta > 1 - eta h: ~(1 - beta) / h
    err = schedule_error(EMA(beta), lr, [0.05, 0.5, 5.0], steps, lrs)
    assert err["variance_ratio"][1] == pytest.approx(1.0, rel=1e-10)
    assert abs(err["variance_ratio"][0] - 1) > 1e-3  # a shared schedule is not exact off the reference h


def test_map_input_errors():
    with pytest.raises(ValueError, match="curvature > 0"):
        equivalent_schedule(EMA(0.9), 0.1, 0.0, 10)
    with pytest.raises(ValueError, match="stability limit"):
        equivalent_schedule(EMA(0.9), 5.0, 1.0, 10)
    with pytest.raises(ValueError, match="noise must be one of"):
        simulate(NoisyQuadratic(1.0, 1.0, 0.1), 10, noise="uniform")
