"""Closed-form tests of the averaging rules and their kernels."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from averaging_fixtures import all_rules

from trajlab.averaging import EMA, SWA, Kernel, MultiPoint, PowerEMA, TwoPoint


def run(rule, values, every_steps=1, dtype=torch.float64):
    """Fold scalar iterates values[0..T] (theta_t = values[t]) on the update grid; return the average."""
    state = rule.init([torch.tensor([values[0]], dtype=dtype)], every_steps=every_steps)
    for t in range(1, len(values)):
        if t % every_steps == 0:
            state = rule.update(state, [torch.tensor([values[t]], dtype=dtype)], t)
    return rule.value(state)[0].item()


VALUES = np.random.default_rng(0).normal(size=13)


def test_ema_known_sequence():
    d = 0.9
    expected = d**2 * VALUES[0] + d * (1 - d) * VALUES[1] + (1 - d) * VALUES[2]
    assert run(EMA(d), VALUES[:3]) == pytest.approx(expected, abs=1e-12)


def test_ema_bias_correction():
    # optax test_ema_debias: theta_0 drops out, the rest renormalised.
    d = 0.9
    expected = ((1 - d) * VALUES[2] + d * (1 - d) * VALUES[1]) / (1 - d**2)
    assert run(EMA(d, bias_correction=True), VALUES[:3]) == pytest.approx(expected, abs=1e-12)


def test_ema_warmup_is_uniform_then_ema():
    rule = EMA(0.75, warmup=True)  # switch at s = 3: d_s = min(0.75, s/(s+1))
    assert run(rule, VALUES[:4]) == pytest.approx(VALUES[:4].mean(), abs=1e-12)
    w = rule.weights(6)
    assert w[5] / w[4] == pytest.approx(1 / 0.75) and w[6] == pytest.approx(0.25)


def test_half_life_halves_weight():
    w = EMA(half_life_steps=5.0).weights(40)
    assert w[40 - 5] / w[40] == pytest.approx(0.5)
    assert EMA(half_life_steps=5.0).decay == pytest.approx(2 ** (-1 / 5))


def test_horizon_is_in_steps():
    # Weight left on theta_0 is decay**t whatever the update interval.
    for every in (1, 5, 10):
        assert EMA(0.99).weights(100, every)[0] == pytest.approx(0.99**100)


def test_swa_is_mean():
    assert run(SWA(), VALUES) == pytest.approx(VALUES.mean(), abs=1e-12)
    assert run(SWA(start_step=5), VALUES) == pytest.approx(VALUES[5:].mean(), abs=1e-12)
    assert run(SWA(start_step=5), VALUES[:4]) == pytest.approx(VALUES[3])  # before the start: the model
    assert run(SWA(window_steps=4), VALUES) == pytest.approx(VALUES[-4:].mean(), abs=1e-12)
    assert run(SWA(), VALUES, every_steps=3) == pytest.approx(VALUES[::3].mean(), abs=1e-12)


def test_two_point_and_multi_point_exact():
    assert run(TwoPoint(4), VALUES) == pytest.approx((VALUES[12] + VALUES[8]) / 2, abs=1e-12)
    assert run(TwoPoint(4), VALUES, every_steps=4) == pytest.approx((VALUES[12] + VALUES[8]) / 2, abs=1e-12)
    assert run(TwoPoint(4), VALUES[:3]) == pytest.approx(VALUES[2])  # before the gap: theta_t
    assert run(MultiPoint(3, 4), VALUES) == pytest.approx(VALUES[[12, 9, 6, 3]].mean(), abs=1e-12)


def test_power_ema_kernel_closed_form():
    g, t = 2.0, 12
    j = np.arange(1, t + 1)
    expected = (j ** (g + 1) - (j - 1) ** (g + 1)) / t ** (g + 1)
    np.testing.assert_allclose(PowerEMA(g).weights(t)[1:], expected, rtol=1e-12)
    # every_steps=3: the profile stays in steps (EDM2's (1 - dt/t)^(g+1)).
    j = np.arange(3, t + 1, 3)
    np.testing.assert_allclose(PowerEMA(g).weights(t, 3)[j], (j**3 - (j - 3) ** 3) / t**3, rtol=1e-12)


def test_power_ema_from_sigma_rel_matches_edm2():
    assert PowerEMA.from_sigma_rel(0.1).gamma == pytest.approx(6.94, abs=0.01)


@pytest.mark.parametrize("every", [1, 2])
def test_kernel_sums_to_one_and_matches_update(rule, every):
    for step in (0, 1, 5, 12):
        w = rule.weights(step, every)
        assert w.shape == (step + 1,) and w.dtype == np.float64
        assert w.sum() == pytest.approx(1.0, abs=1e-12)
    assert run(rule, VALUES, every) == pytest.approx(float(rule.weights(12, every) @ VALUES), abs=1e-12)


def test_kernel_rule_normalises():
    rule = Kernel(lambda steps, t: np.where(steps == t, 3.0, 0.0) + np.where(steps == 0, 1.0, 0.0), name="k")
    np.testing.assert_allclose(rule.weights(4), [0.25, 0, 0, 0, 0.75])
    with pytest.raises(ValueError, match="sum to 0"):
        Kernel(lambda steps, t: np.zeros(len(steps))).weights(3)
    with pytest.raises(ValueError, match="post hoc"):
        rule.init([torch.zeros(1)])


def test_names_are_stable():
    assert [r.name for r in all_rules()] == [
        "ema_0.8",
        "ema_hl3_warmup",
        "ema_0.9_debiased",
        "ema_0.7_warmup_debiased",
        "swa_start0",
        "swa_start4",
        "swa_window4",
        "two_point_k4",
        "multi_point_k2_n3",
        "power_ema_g2",
        "kernel_window_kernel",
    ]
    assert EMA(0.999).name == "ema_0.999" and TwoPoint(2000).name == "two_point_k2000"
    assert SWA(1000).name == "swa_start1000"


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: EMA(1.0), r"\[0, 1\)"),
        (lambda: EMA(-0.1), r"\[0, 1\)"),
        (lambda: EMA(), "exactly one"),
        (lambda: EMA(0.9, half_life_steps=3), "exactly one"),
        (lambda: EMA(half_life_steps=0), "half_life_steps"),
        (lambda: SWA(start_step=-1), "start_step"),
        (lambda: SWA(window_steps=0), "window_steps"),
        (lambda: TwoPoint(0), "gap_steps"),
        (lambda: MultiPoint(3, 1), "points"),
        (lambda: PowerEMA(-1.0), "gamma"),
        (lambda: TwoPoint(5).weights(10, every_steps=2), "not a multiple"),
        (lambda: EMA(0.9).weights(10, every_steps=0), "every_steps"),
    ],
)
def test_validation(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_rules_pickle():
    for r in all_rules():
        assert pickle.loads(pickle.dumps(r)).weights(7).tolist() == r.weights(7).tolist()
