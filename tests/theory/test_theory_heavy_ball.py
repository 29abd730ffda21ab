"""Heavy-ball closed forms per curvature: exact against moment recursions, statistical vs the simulator."""

import numpy as np
import pytest

from trajlab.theory import NoisyQuadratic, equivalent_lr, simulate
from trajlab.theory import heavy_ball as hb
from trajlab.theory._rules import RuleSpec

# Every regime of the roots: slow real, near critical, complex, negative real (eps > 1 + mu + 2 sqrt mu).
LR = 0.1
MOMENTA = [0.0, 0.5, 0.9]
Z = 4.0  # simulator tolerance in standard errors (batch means), as in test_theory_simulate_maps.py


def _curvatures(mu):
    critical = (1 - np.sqrt(mu)) ** 2 / LR
    limit = 2 * (1 + mu) / LR
    return np.array([1e-4, 0.02, critical * 0.999, critical * 1.001, 0.5, 3.0, limit * 0.9, limit * 0.999])


def _recursion(lags, eps, mu):
    rho = np.zeros((max(lags) + 1, eps.size))
    rho[0] = 1.0
    rho[1] = (1 + mu - eps) / (1 + mu)
    for k in range(2, rho.shape[0]):
        rho[k] = (1 + mu - eps) * rho[k - 1] - mu * rho[k - 2]
    return rho[lags]


@pytest.mark.parametrize("mu", MOMENTA)
def test_autocorrelation_closed_form_equals_recursion(mu):
    h = _curvatures(mu)
    lags = [0, 1, 2, 3, 7, 50, 400, 3000]
    np.testing.assert_allclose(hb.autocorrelation(lags, LR, h, mu), _recursion(lags, LR * h, mu), atol=1e-9)


def test_autocorrelation_far_lags_are_finite_and_decay():
    rho = hb.autocorrelation([10**6, 10**9], LR, [1e-6, 1e-3, 1.0], 0.9)
    assert np.all(np.isfinite(rho)) and np.all(np.abs(rho[1]) <= np.abs(rho[0]) + 1e-15)


@pytest.mark.parametrize("mu", MOMENTA)
def test_ema_two_point_and_kernel_ratios_equal_lyapunov_and_weighted_sums(mu):
    h = _curvatures(mu)
    m = NoisyQuadratic(h, 1.0, LR, mu)
    v = m.stationary_variance()
    for beta in (0.9, 0.99, 0.998):
        exact = m.stationary_variance(RuleSpec("ema", decay=beta)) / v
        np.testing.assert_allclose(hb.ema_variance_ratio(beta, LR, h, mu), exact, rtol=1e-7)
    for gap in (1, 13, 800):
        exact = m.stationary_variance(RuleSpec("two_point", gap=gap, points=2)) / v
        np.testing.assert_allclose(hb.two_point_variance_ratio([gap], LR, h, mu)[0], exact, rtol=1e-9)
    kernel = np.random.default_rng(0).random(400)
    kernel /= kernel.sum()
    exact = m.stationary_variance(kernel, step=399) / v
    np.testing.assert_allclose(hb.kernel_variance_ratio(kernel, LR, h, mu), exact, rtol=1e-8)


@pytest.mark.parametrize("mu", MOMENTA)
def test_companion_power_is_matrix_power(mu):
    h = _curvatures(mu)
    f, _ = NoisyQuadratic(h, 1.0, LR, mu)._system()
    for n in (0, 1, 2, 9, 300):
        power = hb.companion_power([n], LR * h, mu)[0]
        np.testing.assert_allclose(power, np.linalg.matrix_power(f, n), atol=1e-9)


def test_ratios_match_simulator_with_momentum():
    h, mu = np.array([0.003, 0.05, 2.0]), 0.9
    m = NoisyQuadratic(h, [1.0, 1.0, 0.05], LR, mu)
    rules = {"ema": RuleSpec("ema", decay=0.99), "two": RuleSpec("two_point", gap=7, points=2)}
    r = simulate(m, 200_000, seeds=4, rules=rules, seed=5, noise="rademacher")
    v = m.stationary_variance()
    for name, ratio in (
        ("ema", hb.ema_variance_ratio(0.99, LR, h, mu)),
        ("two", hb.two_point_variance_ratio([7], LR, h, mu)[0]),
    ):
        sim = r["rules"][name]
        assert np.all(np.abs(sim["variance"] - ratio * v) <= Z * sim["variance_se"]), name


def _pytorch_drop(h, lr, new_lr, mu, ages):
    """Moments of SGD in PyTorch's form (buffer v = mu v + g, theta -= lr v), lr switched once."""
    cov = np.zeros((h.size, 2, 2))

    def step(cov, eta):
        a = np.zeros((h.size, 2, 2))
        a[:, 0, 0], a[:, 0, 1], a[:, 1, 0], a[:, 1, 1] = 1 - eta * h, -eta * mu, h, mu
        c = np.stack([eta * h, -h], 1)
        return a @ cov @ np.swapaxes(a, 1, 2) + c[:, :, None] * c[:, None, :]

    for _ in range(20_000):
        cov = step(cov, lr)
    start, out = cov[:, 0, 0], []
    for t in range(max(ages) + 1):
        if t in ages:
            out.append(cov[:, 0, 0] / start)
        cov = step(cov, new_lr)
    return np.array(out)


@pytest.mark.parametrize("mu", [0.0, 0.9])
def test_lr_drop_ratio_equals_pytorch_moment_recursion(mu):
    h = np.array([0.01, 0.05, 1.0, 5.0])  # relaxation <= 1000 steps: 20k burn-in steps are stationary
    ages = [0, 1, 2, 10, 100, 1000, 3000]
    exact = _pytorch_drop(h, LR, LR / 8, mu, ages)
    np.testing.assert_allclose(hb.lr_drop_variance_ratio(ages, LR, LR / 8, h, mu), exact, rtol=1e-8)


@pytest.mark.parametrize("mu", [0.0, 0.9])
def test_schedule_ratio_of_a_constant_new_lr_is_the_lr_drop(mu):
    """Reference: a schedule holding new_lr for T steps is the closed-form lr drop at age T (PyTorch's
    velocity rescaling at the switch included); the constant schedule keeps the stationary variance."""
    h = _curvatures(mu)
    for ages in (1, 10, 300):
        drop = hb.lr_drop_variance_ratio([ages], LR, LR / 8, h, mu)[0]
        np.testing.assert_allclose(hb.schedule_variance_ratio([LR / 8] * ages, LR, h, mu), drop, rtol=1e-8)
    np.testing.assert_allclose(hb.schedule_variance_ratio([LR] * 50, LR, h, mu), 1.0, rtol=1e-9)


def test_lr_drop_ratio_matches_simulator():
    h, mu, seeds = np.array([0.01, 1.0]), 0.9, 6000
    m = NoisyQuadratic(h, 1.0, LR, mu)
    rng = np.random.default_rng(7)
    from trajlab.theory.simulate import _stationary_start

    x0, x_prev = _stationary_start(m, (seeds, h.size), rng)
    r = 1 / 8  # PyTorch rescales the step theta_0 - theta_{-1} by new_lr / lr at the switch
    ages = [5, 50, 500]
    sim = simulate(
        m.with_lr(LR / 8),
        500,
        seeds=seeds,
        start=x0,
        start_previous=(1 - r) * x0 + r * x_prev,
        record_steps=ages,
        seed=8,
    )
    var = m.stationary_variance() * hb.lr_drop_variance_ratio(ages, LR, LR / 8, h, mu)
    se = np.sqrt(2.0 / seeds) * var  # Var(x^2) = 2 var^2 for a Gaussian start and noise
    assert np.all(np.abs(sim["second_moment"] - var) <= Z * se)


def test_small_eps_limits_with_momentum():
    # EMA: R -> 1 / (1 + tau_e / tau) with tau = (1 - mu) / eps (time constants add); the equivalent lr is the
    # paper's lr / (1 + lr h tau_e) with the effective lr lr / (1 - mu).
    h, mu, beta = np.array([1e-4, 3e-4]), 0.9, 0.999
    ratio = hb.ema_variance_ratio(beta, LR, h, mu)
    np.testing.assert_allclose(ratio, 1 / (1 + (1 - mu) ** -1 * LR * h / (1 - beta)), rtol=0.02)
    eq = hb.equivalent_lr_for_ratio(ratio, LR, h, mu)
    np.testing.assert_allclose(eq, LR / (1 + LR / (1 - mu) * h / (1 - beta)), rtol=0.02)
    existing = [equivalent_lr(RuleSpec("ema", decay=beta), LR, hh, mu) for hh in h]
    np.testing.assert_allclose(eq, existing, rtol=1e-9)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="sum to 1"):
        hb.kernel_variance_ratio([0.5, 0.6], LR, 1.0)
    with pytest.raises(ValueError, match="whole numbers"):
        hb.autocorrelation([1.5], LR, 1.0)
    with pytest.raises(ValueError, match="stability limit"):
        hb.ema_variance_ratio(0.9, LR, 40.0, 0.9)
    with pytest.raises(ValueError, match="decay"):
        hb.ema_variance_ratio(1.0, LR, 1.0)
