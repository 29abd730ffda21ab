"""Closed forms of the NQM against the paper's formulas and against slow obvious references."""

import numpy as np
import pytest
from standin_rules import EMA, SWA, MultiPoint, PowerEMA, TwoPoint

from trajlab.theory import NoisyQuadratic, schedule_excess_loss

H = np.array([0.02, 0.3, 1.0, 3.0])
S2 = np.array([1.0, 0.5, 2.0, 0.3])


def brute_variance(model, w):
    # Var(sum_j w_j x_j) = sum_{j,l} w_j w_l gamma_{|j-l|}, the obvious O(n^2) reference.
    n = w.size
    gam = np.stack([model.autocovariance(k) for k in range(n)], axis=1)
    lag = np.abs(np.arange(n)[:, None] - np.arange(n)[None, :])
    return np.einsum("j,l,djl->d", w, w, gam[:, lag])


def test_paper_formulas_without_momentum():
    m = NoisyQuadratic(H, S2, lr=0.1)
    eps, a = m.eps, 1 - m.eps
    v = eps * S2 / (2 - eps)
    np.testing.assert_allclose(m.stationary_variance(), v, rtol=1e-14)
    np.testing.assert_allclose(m.autocovariance(7), v * a**7, rtol=1e-12)
    beta = 0.95
    np.testing.assert_allclose(
        m.stationary_variance(EMA(beta)),
        v * (1 - beta) * (1 + a * beta) / ((1 + beta) * (1 - a * beta)),
        rtol=1e-10,
    )
    np.testing.assert_allclose(m.stationary_variance(TwoPoint(13)), 0.5 * v * (1 + a**13), rtol=1e-12)
    p, k = 4, 5
    mp = (p * v + 2 * sum((p - i) * v * a ** (i * k) for i in range(1, p))) / p**2
    np.testing.assert_allclose(m.stationary_variance(MultiPoint(k, p)), mp, rtol=1e-12)
    assert m.excess_loss() == pytest.approx(0.5 * np.sum(H * v), rel=1e-14)


@pytest.mark.parametrize("momentum", [0.0, 0.6, 0.9])
def test_rules_match_general_weighted_sum(momentum):
    m = NoisyQuadratic(H, S2, lr=0.05, momentum=momentum)
    for rule, w in [
        (TwoPoint(9), TwoPoint(9).weights(9)),
        (MultiPoint(4, 3), MultiPoint(4, 3).weights(8)),
        (SWA(0, window_steps=12), np.full(12, 1 / 12)),
    ]:
        np.testing.assert_allclose(m.stationary_variance(rule), brute_variance(m, w), rtol=1e-10)
        np.testing.assert_allclose(m.stationary_variance(w), brute_variance(m, w), rtol=1e-10)
    # EMA: the 3x3 Lyapunov solution equals the truncated weighted sum (decay^400 ~ 1e-18).
    ema_w = 0.9 ** np.arange(400)[::-1] * 0.1
    np.testing.assert_allclose(m.stationary_variance(EMA(0.9)), brute_variance(m, ema_w), rtol=1e-8)


def test_momentum_stationary_variance_ar2():
    mu, lr = 0.9, 0.01
    m = NoisyQuadratic(H, S2, lr=lr, momentum=mu)
    eps = m.eps
    expected = (1 + mu) * eps * S2 / ((1 - mu) * (2 * (1 + mu) - eps))
    np.testing.assert_allclose(m.stationary_variance(), expected, rtol=1e-14)
    # Small-eps limit: lr_eff = lr / (1 - mu) in the plain formula.
    plain = NoisyQuadratic(H[:2], S2[:2], lr=lr / (1 - mu))
    np.testing.assert_allclose(m.stationary_variance()[:2], plain.stationary_variance(), rtol=0.02)


@pytest.mark.parametrize("momentum", [0.0, 0.7])
def test_over_time_moments_match_stepwise_recursion(momentum):
    m = NoisyQuadratic(H, S2, lr=0.08, momentum=momentum)
    start = np.array([1.0, -2.0, 0.5, 3.0])
    steps = [0, 1, 5, 77, 300]
    doubling = m.excess_loss_at(steps, start, start_variance=0.2)
    stepwise = schedule_excess_loss(m, np.full(300, 0.08), start, 0.2, record_steps=steps)
    np.testing.assert_allclose(doubling, stepwise, rtol=1e-11)


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_over_time_rule_fast_forms_match_general_weights(momentum):
    m = NoisyQuadratic(H, S2, lr=0.05, momentum=momentum)
    start = np.array([1.0, -1.0, 2.0, 0.3])
    for rule in [EMA(0.97), SWA(start_step=40), SWA(start_step=10, window_steps=25), TwoPoint(30)]:
        for t in (5, 120):
            fast = m.moments_at(t, start, 0.1, rule)
            general = m.moments_at(t, start, 0.1, rule.weights(t))
            np.testing.assert_allclose(fast, general, rtol=1e-10, atol=1e-15)


def test_general_rule_and_unknown_convention_fall_back():
    m = NoisyQuadratic(H, S2, lr=0.05)
    rule = PowerEMA(2.0)
    np.testing.assert_allclose(
        m.moments_at(50, 1.0, 0.0, rule), m.moments_at(50, 1.0, 0.0, rule.weights(50)), rtol=1e-12
    )
    with pytest.raises(ValueError, match="pass step"):
        m.stationary_variance(rule)
    # An "EMA" whose weights differ from the plain EMA is treated through its weights, not its name.
    odd = EMA(0.9, bias_correction=True)
    np.testing.assert_allclose(
        m.moments_at(30, 1.0, 0.0, odd), m.moments_at(30, 1.0, 0.0, odd.weights(30)), rtol=1e-12
    )


def test_derived_observables():
    m = NoisyQuadratic(np.full(3, 0.5), 1.0, lr=0.02)
    eps = 0.01
    # Isotropic: cos ~ sqrt(v / (v + s^2)) ~ sqrt(eta h / 2).
    assert m.gradient_alignment() == pytest.approx(
        np.sqrt(eps / (2 - eps) / (eps / (2 - eps) + 1)), rel=1e-12
    )
    np.testing.assert_allclose(m.batch_memory([0, 10]), -3 * 0.5 * eps * np.array([1, (1 - eps) ** 10]))
    d = m.trajectory_distance(100, start_difference=2.0)
    assert d["same_batches"] == pytest.approx(3 * 4 * (1 - eps) ** 200, rel=1e-12)
    v100 = eps**2 * (1 - (1 - eps) ** 200) / (1 - (1 - eps) ** 2)
    assert d["different_orders"] == pytest.approx(2 * 3 * v100, rel=1e-12)


def test_from_density_quantiles():
    m = NoisyQuadratic.from_density(lambda h: np.ones_like(h), (0.0, 1.0), 4, 1.0, 0.1, log_grid=False)
    np.testing.assert_allclose(m.curvatures, [0.125, 0.375, 0.625, 0.875], rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"curvatures": [-1.0], "noise": 1.0, "lr": 0.1}, "curvatures must be >= 0"),
        ({"curvatures": [1.0], "noise": -1.0, "lr": 0.1}, "noise must be >= 0"),
        ({"curvatures": [1.0], "noise": 1.0, "lr": 2.0}, "stability limit"),
        ({"curvatures": [1.0], "noise": 1.0, "lr": 3.5, "momentum": 0.7}, "stability limit"),
        ({"curvatures": [1.0], "noise": 1.0, "lr": 0.1, "momentum": 1.0}, "momentum must be in"),
        ({"curvatures": [1.0], "noise": 1.0, "lr": 0.0}, "lr must be"),
    ],
)
def test_bad_model_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NoisyQuadratic(**kwargs)


def test_bad_rule_input():
    m = NoisyQuadratic(H, S2, lr=0.1)
    with pytest.raises(ValueError, match="decay must be in"):
        m.stationary_variance(EMA(1.0))
    with pytest.raises(ValueError, match="gap_steps must be an integer"):
        m.stationary_variance(TwoPoint(0))
    with pytest.raises(ValueError, match="no stationary variance"):
        m.stationary_variance(SWA(0))
    with pytest.raises(ValueError, match="sum to 1"):
        m.stationary_variance(np.array([0.5, 0.6]))
