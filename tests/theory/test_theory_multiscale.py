"""The multi-timescale fit recovers the timescales of simulated trajectories; it never returns a silent 0."""

import json

import numpy as np
import pytest

from trajlab.theory import simulate
from trajlab.theory import spectrum as sp
from trajlab.theory._rules import RuleSpec
from trajlab.theory._solvers import bounded_lstsq
from trajlab.theory.measured import ladder_equivalent_lr, predict_from_measurements
from trajlab.theory.measurements import LadderBranch, RunMeasurements
from trajlab.theory.multiscale import fit_timescales
from trajlab.theory.simulate import _stationary_start

LR, MU, FLOOR = 0.1, 0.9, 0.3
# Three timescales at lr 0.1, momentum 0.9: complex roots (19 steps), ~90 steps, ~2000 steps.
H = np.array([1.0, 0.01, 0.0005])
A = np.array([0.05, 0.02, 0.01])
GAPS = [1, 2, 3, 5, 8, 13, 20, 30, 50, 100, 200, 400, 800, 1600, 3200, 6400]
# Stated tolerances: each true curvature inside the fitted 2-sigma profile interval and within 15% (the two
# fast groups) or 35% (the slow one, seen over only ~200 relaxation times); amplitudes within 4 SE.
H_TOL = np.array([0.15, 0.15, 0.35])


@pytest.fixture(scope="module")
def simulated():
    """Two-point gains, EMA losses and two lr-drop branches, all measured on simulated trajectories."""
    m = sp.from_loss_weights(H, A, LR, MU)
    rules = {f"g{k}": RuleSpec("two_point", gap=k, points=2) for k in GAPS}
    rules.update({"e99": RuleSpec("ema", decay=0.99), "e998": RuleSpec("ema", decay=0.998)})
    r = simulate(m, 400_000, seeds=4, rules=rules, seed=21, noise="rademacher", burn_in_steps=20_000)
    last, last_se = r["excess_loss"], r["excess_loss_se"]
    gains = [last - r["rules"][f"g{k}"]["excess_loss"] for k in GAPS]
    gains_se = [np.hypot(last_se, r["rules"][f"g{k}"]["excess_loss_se"]) for k in GAPS]
    seeds, ages = 2000, np.unique(np.geomspace(10, 10_000, 20).astype(int))
    branches = []
    for div in (2, 8):
        x0, x_prev = _stationary_start(m, (seeds, H.size), np.random.default_rng(div))
        ratio = 1.0 / div  # PyTorch rescales the last step by new lr / lr at the switch
        s = simulate(
            m.with_lr(LR / div),
            int(ages.max()),
            seeds=seeds,
            start=x0,
            start_previous=(1 - ratio) * x0 + ratio * x_prev,
            record_steps=ages,
            seed=30 + div,
            noise="rademacher",
        )
        se = np.sqrt(np.sum((H * s["second_moment"]) ** 2, axis=1) / 2 / seeds)
        branches.append(LadderBranch(LR / div, ages, FLOOR + s["excess_loss"], se))
    emas = [r["rules"]["e99"], r["rules"]["e998"]]
    return {
        "model": m,
        "last": (FLOOR + last, last_se),
        "gains": (gains, gains_se),
        "ema": ([FLOOR + e["excess_loss"] for e in emas], [e["excess_loss_se"] for e in emas]),
        "ladder": tuple(branches),
    }


def _measurements(sim, *, ema=True, ladder=True):
    kw = {}
    if ema:
        kw.update(ema_decays=[0.99, 0.998], ema_losses=sim["ema"][0], ema_losses_se=sim["ema"][1])
    if ladder:
        kw["ladder"] = sim["ladder"]
    return RunMeasurements(
        LR,
        MU,
        last_loss=sim["last"][0],
        last_loss_se=sim["last"][1],
        two_point_gaps=GAPS,
        two_point_gains=sim["gains"][0],
        two_point_gains_se=sim["gains"][1],
        **kw,
    )


def test_fit_recovers_simulated_timescales(simulated):
    fit = fit_timescales(_measurements(simulated))
    assert len(fit.groups) == 3 and not fit.reasons
    for group, h, tol, a in zip(fit.groups, H, H_TOL, A):
        assert group.reason is None
        assert group.curvature_interval[0] <= h <= group.curvature_interval[1]
        assert group.curvature == pytest.approx(h, rel=tol)
        assert abs(group.amplitude - a) <= 4 * group.amplitude_se
    assert abs(fit.min_loss - FLOOR) <= 4 * fit.min_loss_se
    # BIC prefers 3 groups: 2 leave a large chi^2.
    chi2 = {c["groups"]: c["chi2"] for c in fit.candidates}
    assert chi2[2] > 5 * chi2[3]


def test_prediction_from_gains_and_ladder_matches_exact_ema(simulated):
    m = simulated["model"]
    pred = predict_from_measurements(_measurements(simulated, ema=False), ema_decays=(0.99, 0.998))
    for decay, eta, se in zip(pred.ema_decays, pred.equivalent_lr, pred.equivalent_lr_se):
        exact = sp.ema_equivalent_lr(m, decay)
        assert abs(eta - exact) <= 4 * se + 0.05 * exact
    np.testing.assert_allclose(pred.gain, sp.two_point_gain_curve(m, GAPS), atol=4 * max(pred.gain_se))
    json.dumps(pred.to_dict())  # JSON-ready


def test_flat_gain_curve_reports_an_unidentified_timescale():
    # Every gap beyond the relaxation time: the gain curve is flat, so the curvature is only bounded below.
    meas = RunMeasurements(
        LR,
        MU,
        two_point_gaps=[50, 100, 200, 400],
        two_point_gains=[0.03, 0.031, 0.029, 0.03],
        two_point_gains_se=0.002,
    )
    pred = predict_from_measurements(meas, gaps=[1, 5, 1000])
    (group,) = pred.fit.groups
    assert group.amplitude == pytest.approx(0.06, rel=0.1)
    assert "only a lower bound on the curvature" in group.reason and "flat gain curve" in group.reason
    assert np.isnan(pred.fit.min_loss) and "L_min is not determined" in pred.fit.min_loss_reason
    assert "L_min" in pred.reasons["ema[0.99]"] and "curvature interval" in pred.reasons["ema[0.99]"]
    assert "gain[1]" in pred.reasons  # the small-gap gain depends on the unidentified curvature


def test_no_excess_detected_gives_nan_with_reasons_not_zero():
    meas = RunMeasurements(
        LR,
        MU,
        last_loss=0.4,
        last_loss_se=0.01,
        two_point_gaps=[50, 100, 200],
        two_point_gains=[-0.01, 0.002, -0.003],
        two_point_gains_se=0.002,
    )
    pred = predict_from_measurements(meas)
    assert all(g.amplitude == 0 and "amplitude at its bound 0" in g.reason for g in pred.fit.groups)
    assert any("no excess loss detected" in r for r in pred.fit.reasons)
    assert np.all(np.isnan(pred.equivalent_lr)) and np.all(np.isnan(pred.gain))
    assert all("no excess loss" in pred.reasons[f"gain[{k}]"] for k in (50, 100, 200))


def test_autocovariances_give_timescales():
    # Loss and weight autocovariances (shapes only, free weights) plus gains recover two timescales.
    m = sp.from_loss_weights(H[:2], A[:2], LR, MU)
    lags = [1, 3, 10, 30, 100, 300]
    r = simulate(m, 200_000, seeds=4, lags=lags, seed=4, noise="rademacher")
    weight_autocov = [float(np.sum(r["autocovariance"][k])) for k in lags]
    gains = sp.two_point_gain_curve(m, [2, 50, 400])
    meas = RunMeasurements(
        LR,
        MU,
        two_point_gaps=[2, 50, 400],
        two_point_gains=gains,
        two_point_gains_se=1e-4,
        weight_autocov_lags=lags,
        weight_autocov=weight_autocov,
        weight_autocov_se=0.02 * weight_autocov[0],
    )
    fit = fit_timescales(meas, num_groups=2)
    for group, h in zip(fit.groups, H[:2]):
        assert group.curvature == pytest.approx(h, rel=0.2)


def test_ladder_equivalent_lr_interpolates_and_flags_extrapolation():
    lrs, losses = [0.1, 0.05, 0.025], [0.40, 0.34, 0.32]
    lr, why = ladder_equivalent_lr(lrs, losses, 0.33)
    assert lr == pytest.approx(0.025 * 2**0.5) and why is None
    lr, why = ladder_equivalent_lr(lrs, losses, 0.31)
    assert lr < 0.025 and "below the lowest rung" in why
    with pytest.raises(ValueError, match="ladder needs"):
        ladder_equivalent_lr([0.1], [0.4], 0.3)


def test_bounded_lstsq_matches_brute_force():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((30, 4)), rng.standard_normal(30)
    x = bounded_lstsq(a, b, np.array([False, True, True, True]))
    best = min(
        (np.sum((a[:, s] @ np.linalg.lstsq(a[:, s], b, rcond=None)[0] - b) ** 2), s)
        for s in ([0], [0, 1], [0, 2], [0, 3], [0, 1, 2], [0, 1, 3], [0, 2, 3], [0, 1, 2, 3])
        if np.all(np.linalg.lstsq(a[:, s], b, rcond=None)[0][1:] >= 0)
    )
    assert np.sum((a @ x - b) ** 2) == pytest.approx(best[0]) and np.all(x[1:] >= 0)


def test_measurement_errors_are_clear():
    with pytest.raises(ValueError, match="positions but"):
        RunMeasurements(LR, MU, two_point_gaps=[1, 2], two_point_gains=[0.1])
    with pytest.raises(ValueError, match="whole numbers"):
        RunMeasurements(LR, MU, two_point_gaps=[0.5], two_point_gains=[0.1])
    with pytest.raises(ValueError, match="LadderBranch"):
        RunMeasurements(LR, MU, ladder=[(0.05, [1], [0.3])])
    with pytest.raises(ValueError, match="needs measurements whose size depends"):
        fit_timescales(RunMeasurements(LR, MU, weight_autocov_lags=[1, 2], weight_autocov=[1.0, 0.5]))
