"""Spectrum closed forms (equivalent lr, gain curve, lr drop) against the simulator, exact for momentum."""

import numpy as np
import pytest

from trajlab.theory import NoisyQuadratic, equivalent_lr, heavy_ball, simulate
from trajlab.theory import spectrum as sp
from trajlab.theory._rules import RuleSpec
from trajlab.theory.simulate import _stationary_start

Z = 4.0  # tolerance in simulator standard errors
LR, MU = 0.1, 0.9
# Three timescales at lr 0.1, momentum 0.9: complex roots (19 steps), near critical (~90), slow (~2000).
H = np.array([1.0, 0.01, 0.0005])
A = np.array([0.05, 0.02, 0.01])


def test_loss_weights_round_trip_and_single_direction_equals_per_curvature_map():
    m = sp.from_loss_weights(H, A, LR, MU)
    np.testing.assert_allclose(sp.loss_weights(m), A, rtol=1e-12)
    one = NoisyQuadratic(0.01, 2.0, LR, MU)
    assert sp.ema_equivalent_lr(one, 0.99) == pytest.approx(
        equivalent_lr(RuleSpec("ema", decay=0.99), LR, 0.01, MU)
    )


def test_equivalent_lr_matches_excess_by_definition_and_two_point_halves():
    m = sp.from_loss_weights(H, A, LR, MU)
    for decay in (0.99, 0.998):
        eta = sp.ema_equivalent_lr(m, decay)
        assert m.with_lr(eta).excess_loss() == pytest.approx(sp.ema_excess_loss(m, decay), rel=1e-9)
    # Two points far beyond every relaxation time: half the variance, so ~ half the lr (to O(eps)).
    assert sp.two_point_equivalent_lr(m, 200_000) == pytest.approx(LR / 2, rel=0.02)
    kernel = np.full(400, 1 / 400)
    eta = sp.kernel_equivalent_lr(m, kernel)
    assert m.with_lr(eta).excess_loss() == pytest.approx(m.excess_loss(kernel, step=399), rel=1e-8)


def test_held_out_weights_change_the_matched_lr():
    m = sp.from_loss_weights(H, A, LR, MU)
    slow_heavy = np.array([0.01, 0.01, 0.05])  # a held-out loss that weighs the slow group more
    assert sp.ema_equivalent_lr(m, 0.99, weights=slow_heavy) > sp.ema_equivalent_lr(m, 0.99)


def test_gain_curve_and_ema_excess_match_simulator():
    m = sp.from_loss_weights(H[:2], A[:2], LR, MU)
    gaps = [1, 3, 8, 30, 300]
    rules = {f"two_{k}": RuleSpec("two_point", gap=k, points=2) for k in gaps}
    rules["ema"] = RuleSpec("ema", decay=0.99)
    r = simulate(m, 120_000, seeds=8, rules=rules, seed=11, noise="rademacher")
    predicted = sp.two_point_gain_curve(m, gaps)
    for k, gain in zip(gaps, predicted):
        sim = r["rules"][f"two_{k}"]
        se = np.hypot(r["excess_loss_se"], sim["excess_loss_se"])
        assert abs(r["excess_loss"] - sim["excess_loss"] - gain) <= Z * se, k
    sim = r["rules"]["ema"]
    assert abs(sim["excess_loss"] - sp.ema_excess_loss(m, 0.99)) <= Z * sim["excess_loss_se"]


def test_equivalent_lr_run_matches_simulated_ema():
    # Simulate SGD at the predicted equivalent lr: its loss equals the simulated EMA's within the SEs.
    m = sp.from_loss_weights(H[:2], A[:2], LR, MU)
    eta = sp.ema_equivalent_lr(m, 0.99)
    ema = simulate(m, 100_000, seeds=8, rules={"ema": RuleSpec("ema", decay=0.99)}, seed=12)["rules"]["ema"]
    slow = simulate(m.with_lr(eta), 100_000, seeds=8, seed=13)
    assert abs(ema["excess_loss"] - slow["excess_loss"]) <= Z * np.hypot(
        ema["excess_loss_se"], slow["excess_loss_se"]
    )


def test_lr_drop_excess_matches_simulator():
    m = sp.from_loss_weights(H[:2], A[:2], LR, MU)
    seeds, new_lr, ages = 4000, LR / 4, [10, 100, 1000]
    x0, x_prev = _stationary_start(m, (seeds, 2), np.random.default_rng(14))
    r = new_lr / LR
    sim = simulate(
        m.with_lr(new_lr),
        1000,
        seeds=seeds,
        start=x0,
        start_previous=(1 - r) * x0 + r * x_prev,
        record_steps=ages,
        seed=15,
    )
    predicted = sp.lr_drop_excess_loss(m, new_lr, ages)
    # SE of 1/2 sum h x^2 over seeds for Gaussian x: sqrt(sum (h v)^2 / 2 / seeds), v the predicted variance.
    v = m.stationary_variance() * heavy_ball.lr_drop_variance_ratio(ages, LR, new_lr, m.curvatures, MU)
    se = np.sqrt(np.sum((m.curvatures * v) ** 2, axis=1) / 2 / seeds)
    assert np.all(np.abs(sim["excess_loss"] - predicted) <= Z * se)


def test_spectrum_errors_are_clear():
    m = NoisyQuadratic(H, 0.0, LR, MU)
    with pytest.raises(ValueError, match="no excess loss"):
        sp.ema_equivalent_lr(m, 0.99)
    with pytest.raises(ValueError, match="must match"):
        sp.two_point_gain_curve(sp.from_loss_weights(H, A, LR, MU), [5], weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="flat direction"):
        sp.from_loss_weights([0.0, 1.0], [0.1, 0.1], LR, MU)
