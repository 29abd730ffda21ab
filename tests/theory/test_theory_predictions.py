"""Predictions, fitting and plots (the CLI's command functions: tests/commands/test_theory.py)."""

import numpy as np
import pytest
from matplotlib.figure import Figure
from standin_rules import EMA, TwoPoint

from trajlab.reports import theory_plots
from trajlab.theory import (
    NoisyQuadratic,
    best_ema_decay,
    ema_vs_reduced_lr,
    equivalent_schedule,
    fit,
    swa_vs_cooldown,
    two_point_gain,
)

MODEL = NoisyQuadratic(np.geomspace(0.05, 1.0, 6), 1.0, lr=0.2)


def test_two_point_gain_monotone_to_half():
    r = two_point_gain(MODEL, [1, 10, 100, 10_000])
    assert np.all(np.diff(r["excess_loss"]) < 0)
    assert r["ratio"][-1] == pytest.approx(0.5, abs=1e-9)


def test_best_ema_decay_is_interior_and_optimal():
    r = best_ema_decay(MODEL, 500, start=2.0)
    assert r["decays"][0] < r["best_decay"] < r["decays"][-1]
    assert r["best_excess_loss"] <= r["excess_loss"].min() + 1e-15
    assert r["best_excess_loss"] < r["sgd_excess_loss"]


def test_ema_and_swa_track_reduced_lr():
    r = ema_vs_reduced_lr(MODEL, 0.99, 3000, start=1.0)
    # matched_lr has the EMA's stationary loss by construction; the paper's reduced lr tracks it in time.
    assert MODEL.with_lr(r["matched_lr"]).excess_loss() == pytest.approx(
        MODEL.excess_loss(EMA(0.99)), rel=1e-9
    )
    assert r["ema"][-1] == pytest.approx(r["reduced_lr_curve"][-1], rel=0.1)
    assert r["matched_lr"] < MODEL.lr
    s = swa_vs_cooldown(MODEL, 500, 5000, start=1.0)
    assert s["swa"][-1] < s["sgd"][-1] and s["cooldown"][-1] < s["sgd"][-1]
    # ...and SWA and the 1/t cooldown land within a factor 2 of each other.
    assert 0.5 < s["swa"][-1] / s["cooldown"][-1] < 2.0


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_reduced_lr_accounts_for_momentum(momentum):
    # One direction: the EMA at stationarity matches SGD at eta / (1 + eta_eff h tau_e) to first order in
    # eta_eff h, with eta_eff = eta / (1 - mu); ignoring mu would put the reduced lr 10x off at mu = 0.9.
    model = NoisyQuadratic([0.05], 1.0, lr=0.01 * (1 - momentum), momentum=momentum)
    r = ema_vs_reduced_lr(model, 0.99, 4000, start=0.0, curvature=0.05)
    eta_eff = model.lr / (1 - momentum)
    assert r["reduced_lr"] == pytest.approx(model.lr / (1 + eta_eff * 0.05 * 100), rel=1e-12)
    assert r["reduced_lr"] == pytest.approx(r["matched_lr"], rel=0.05)
    s = swa_vs_cooldown(model, 100, 400, start=0.0, curvature=0.05)  # cooldown_lrs[i]: step i + 1
    assert s["cooldown_lrs"][199] == pytest.approx(model.lr / (1 + eta_eff * 0.05 * 100), rel=1e-12)


def test_fit_recovers_curvature_and_noise():
    rng = np.random.default_rng(0)
    h, noise, lr = 0.4, 3.0, 0.1
    best_lrs = 1.0 / (h * (1 + 0.05 * rng.standard_normal(200)))
    rates = lr * h * (1 + 0.05 * rng.standard_normal(100))

    def loss(eta):
        return 2.0 + NoisyQuadratic(h, noise, eta).excess_loss()

    result = fit(
        lr,
        best_lrs=best_lrs,
        memory_decay_rates=rates,
        stationary_losses=[(0.1, loss(0.1), 1e-4), (0.05, loss(0.05), 1e-4)],
        bootstrap=200,
    )
    assert abs(result.curvature_ - h) < 4 * result.curvature_se_ + 0.01 * h
    assert abs(result.noise_ - noise) < 4 * result.noise_se_ + 0.05 * noise
    assert result.min_loss_ == pytest.approx(2.0, abs=0.01)
    gain = result.predict_gain(TwoPoint(10_000))
    assert gain["loss_ratio"] == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ValueError, match="curvature source"):
        fit(lr)


def test_plots_return_figures():
    figs = [
        theory_plots.plot_equivalent_schedule(equivalent_schedule(TwoPoint(50), 0.1, 0.5, 200), 0.1),
        theory_plots.plot_two_point_gain(two_point_gain(MODEL, [1, 10, 100])),
        theory_plots.plot_best_ema_decay(best_ema_decay(MODEL, 200, start=1.0)),
        theory_plots.plot_ema_vs_reduced_lr(ema_vs_reduced_lr(MODEL, 0.9, 300, start=1.0, num_points=10)),
        theory_plots.plot_swa_vs_cooldown(swa_vs_cooldown(MODEL, 50, 300, start=1.0, num_points=10)),
        theory_plots.plot_agreement(np.array([1.0, 2.0]), np.array([1.01, 1.98]), np.array([0.01, 0.02])),
    ]
    assert all(isinstance(f, Figure) for f in figs)
