"""Predictions from a run's measurements: equivalent lr of EMAs and the two-point gain curve, with reasons.

``predict_from_measurements`` fits the timescale groups (``multiscale.fit_timescales``) and maps them
through the exact heavy-ball closed forms (``spectrum``). Standard errors use the delta method on the
fit's covariance. Every prediction that the data cannot pin down comes with a reason instead of a silent
number; ``ladder_equivalent_lr`` turns measured losses into an lr by interpolation on an lr ladder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from trajlab.theory._validate import decay_value, gap_value
from trajlab.theory.measurements import RunMeasurements
from trajlab.theory.multiscale import MultiscaleFit, fit_timescales
from trajlab.theory.spectrum import (
    ema_equivalent_lr,
    ema_excess_loss,
    from_loss_weights,
    lr_drop_excess_loss,
    two_point_gain_curve,
)

_DEFAULT_GAPS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


def ladder_equivalent_lr(lrs: ArrayLike, losses: ArrayLike, loss: float) -> tuple[float, str | None]:
    """The lr at which a measured lr ladder reaches ``loss``, interpolating the loss linearly in log lr.

    Args:
        lrs: the ladder's lrs (e.g. lr, lr/2, ..., lr/16; the run itself at lr is the top rung).
        losses: the loss of each rung (e.g. test loss averaged over end times and seeds).
        loss: the loss to place on the ladder (e.g. an EMA's test loss).

    Returns:
        (lr, reason): reason is None inside the ladder; outside it the end segment is extrapolated and
        the reason says so; a ladder that is not monotone uses the first crossing from the top and says so.
    """
    x = np.log(np.asarray(lrs, dtype=np.float64))
    y = np.asarray(losses, dtype=np.float64)
    if x.size < 2 or x.size != y.size or not np.all(np.isfinite(x)) or not np.all(np.isfinite(y)):
        raise ValueError("a ladder needs >= 2 finite (lr > 0, loss) pairs of equal length")
    order = np.argsort(-x)
    x, y = x[order], y[order]
    note = None if np.all(np.diff(y) <= 0) else "the ladder's loss is not monotone in lr; first crossing used"
    for i in range(x.size - 1):
        if (y[i] - loss) * (y[i + 1] - loss) <= 0 and y[i] != y[i + 1]:
            frac = (y[i] - loss) / (y[i] - y[i + 1])
            return float(np.exp(x[i] + frac * (x[i + 1] - x[i]))), note
    end = (0, 1) if loss > y[0] else (x.size - 2, x.size - 1)
    slope = (y[end[1]] - y[end[0]]) / (x[end[1]] - x[end[0]])
    if slope == 0:
        return float("nan"), "the loss lies outside a flat ladder; no lr can be assigned"
    side = "above the top" if loss > y[0] else "below the lowest"
    lr = float(np.exp(x[end[0]] + (loss - y[end[0]]) / slope))
    return lr, f"loss {loss:.4g} is {side} rung of the ladder; extrapolated in log lr from the end segment"


@dataclass(frozen=True)
class MeasuredPrediction:
    """Predicted equivalent lr and loss of each EMA and the two-point gain per gap, with reasons."""

    fit: MultiscaleFit
    ema_decays: tuple[float, ...]
    equivalent_lr: tuple[float, ...]
    equivalent_lr_se: tuple[float, ...]
    ema_loss: tuple[float, ...]
    ema_loss_se: tuple[float, ...]
    gaps: tuple[int, ...]
    gain: tuple[float, ...]
    gain_se: tuple[float, ...]
    ladder_lrs: tuple[float, ...]
    ladder_loss: tuple[float, ...]
    equivalent_lr_on_ladder: tuple[float, ...]
    reasons: dict

    def to_dict(self) -> dict:
        """Plain-python dict (JSON-ready), the fit included."""
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items() if k != "fit"}
        out["fit"] = self.fit.to_dict()
        out["reasons"] = dict(self.reasons)
        return out


def _parameter_model(fit: MultiscaleFit) -> Callable[[np.ndarray], tuple]:
    j = len(fit.groups)
    names = fit.param_names

    def build(p: np.ndarray) -> tuple:
        amps = np.array([p[names.index(f"amplitude_{i}")] for i in range(j)])
        floor = p[names.index("min_loss")] if "min_loss" in names else float("nan")
        return from_loss_weights(np.exp(p[:j]), np.maximum(amps, 0.0), fit.lr, fit.momentum), floor

    return build


def _delta_se(fit: MultiscaleFit, func: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Delta-method standard errors of func(params) over the parameters with a finite variance."""
    p = fit.params
    free = np.isfinite(np.diag(fit.covariance))
    base = np.atleast_1d(func(p))
    grad = np.zeros((base.size, p.size))
    for i in np.flatnonzero(free):
        step = 1e-6 * (1.0 + abs(p[i]))
        shifted = p.copy()
        shifted[i] += step
        grad[:, i] = (np.atleast_1d(func(shifted)) - base) / step
    cov = np.where(np.isfinite(fit.covariance), fit.covariance, 0.0)
    return np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", grad, cov, grad), 0.0))


def _dependence_reasons(fit: MultiscaleFit, func: Callable[[np.ndarray], np.ndarray]) -> list[str | None]:
    """Per prediction, the undetermined groups across whose 2-sigma curvature interval it moves > 10%."""
    base = np.atleast_1d(func(fit.params))
    notes: list[list[str]] = [[] for _ in base]
    for i, group in enumerate(fit.groups):
        if not group.reason or group.amplitude <= 0:
            continue
        ends = []
        for h in group.curvature_interval:
            p = fit.params.copy()
            p[i] = np.log(h)
            ends.append(np.atleast_1d(func(p)))
        low, high = np.minimum(*ends), np.maximum(*ends)
        for n, value in enumerate(base):
            if max(abs(low[n] - value), abs(high[n] - value)) > 0.1 * abs(value):
                notes[n].append(
                    f"ranges {low[n]:.3g}..{high[n]:.3g} over group {i}'s curvature interval ({group.reason})"
                )
    return ["; ".join(n) or None for n in notes]


def _undetermined(fit: MultiscaleFit, decays: list, gaps: list, ladder_lrs: tuple) -> MeasuredPrediction:
    why = "no excess loss was detected (every fitted amplitude is 0), so nothing can be predicted"
    nan = lambda n: (float("nan"),) * n  # noqa: E731
    reasons = {f"ema[{b}]": why for b in decays} | {f"gain[{k}]": why for k in gaps}
    return MeasuredPrediction(
        fit=fit,
        ema_decays=tuple(decays),
        equivalent_lr=nan(len(decays)),
        equivalent_lr_se=nan(len(decays)),
        ema_loss=nan(len(decays)),
        ema_loss_se=nan(len(decays)),
        gaps=tuple(gaps),
        gain=nan(len(gaps)),
        gain_se=nan(len(gaps)),
        ladder_lrs=ladder_lrs,
        ladder_loss=nan(len(ladder_lrs)),
        equivalent_lr_on_ladder=nan(len(decays)),
        reasons=reasons,
    )


def _ema_predictions(fit: MultiscaleFit, decays: list, reasons: dict) -> tuple:
    build = _parameter_model(fit)
    model, floor = build(fit.params)
    lrs = np.array([ema_equivalent_lr(model, b) for b in decays])
    log_se = _delta_se(fit, lambda p: np.log([ema_equivalent_lr(build(p)[0], b) for b in decays]))
    losses = np.array([floor + ema_excess_loss(model, b) for b in decays])
    loss_se = _delta_se(
        fit, lambda p: np.array([build(p)[1] + ema_excess_loss(build(p)[0], b) for b in decays])
    )
    depends = _dependence_reasons(
        fit, lambda p: np.array([ema_equivalent_lr(build(p)[0], b) for b in decays])
    )
    for b, lr_se, dependence in zip(decays, log_se, depends):
        notes = [f"equivalent lr {dependence}" if dependence else None]
        if fit.min_loss_reason:
            notes.append(f"the EMA's loss needs L_min: {fit.min_loss_reason}")
        if not np.isfinite(lr_se) or lr_se > 1.0:
            notes.append(
                f"equivalent lr not determined: log standard error {lr_se:.2g} (more than a factor e)"
            )
        if any(notes):
            reasons[f"ema[{b}]"] = "; ".join(n for n in notes if n)
    return lrs, lrs * log_se, losses, loss_se


def _gain_predictions(fit: MultiscaleFit, meas: RunMeasurements, gaps: list, reasons: dict) -> tuple:
    build = _parameter_model(fit)
    gains = two_point_gain_curve(build(fit.params)[0], gaps)
    se = _delta_se(fit, lambda p: two_point_gain_curve(build(p)[0], gaps))
    depends = _dependence_reasons(fit, lambda p: two_point_gain_curve(build(p)[0], gaps))
    for k, dependence, value, err in zip(gaps, depends, gains, se):
        notes = [f"gain {dependence}" if dependence else None]
        if k > meas.horizon_steps:
            notes.append(
                f"gap {k} exceeds the measured horizon ({meas.horizon_steps:.3g} steps): extrapolated"
            )
        if not err < value:
            notes.append(f"gain not determined: standard error {err:.3g} >= value {value:.3g}")
        if any(notes):
            reasons[f"gain[{k}]"] = "; ".join(n for n in notes if n)
    return gains, se


def _ladder_predictions(fit, meas, ladder_ages, ema_losses, decays, reasons) -> tuple:
    if not meas.ladder or ladder_ages is None:
        return (), (), tuple(float("nan") for _ in decays)
    model, floor = _parameter_model(fit)(fit.params)
    lrs = (meas.lr, *(b.lr for b in meas.ladder))
    top = floor + float(np.sum([g.amplitude for g in fit.groups]))
    rungs = [
        top,
        *(floor + float(np.mean(lr_drop_excess_loss(model, b.lr, ladder_ages))) for b in meas.ladder),
    ]
    matched = []
    for b, loss in zip(decays, ema_losses):
        lr, why = ladder_equivalent_lr(lrs, rungs, loss) if np.isfinite(loss) else (float("nan"), "no loss")
        matched.append(lr)
        if why:
            reasons[f"ema_on_ladder[{b}]"] = why
    return lrs, tuple(rungs), tuple(matched)


def predict_from_measurements(
    meas: RunMeasurements,
    ema_decays: Sequence[float] = (0.99, 0.998),
    gaps: Sequence[int] | None = None,
    ladder_ages: Sequence[int] | None = None,
    num_groups: int | None = None,
    max_groups: int = 3,
    fit: MultiscaleFit | None = None,
) -> MeasuredPrediction:
    """Fit timescales to a run's measurements and predict what its averages are worth.

    Args:
        meas: the run's measurements (``RunMeasurements``).
        ema_decays: EMA decays beta to predict (equivalent lr: sum_i A_i f(eta' h_i)/f(eta h_i) =
            sum_i A_i R_i(beta), exact heavy-ball R).
        gaps: two-point gaps k to predict gain(k) = sum_j A_j (1 - rho_j(k)) / 2; default the measured
            gaps, else 1..5000.
        ladder_ages: ages at which the measured ladder was read; when given (and ``meas.ladder``), the
            predicted ladder at those ages and each EMA's lr by interpolation on it
            (``ladder_equivalent_lr``), the like-for-like counterpart of a measured equivalent lr.
        num_groups, max_groups: passed to ``fit_timescales``.
        fit: a fit to reuse instead of fitting ``meas``.

    Returns:
        MeasuredPrediction; ``reasons`` maps "ema[beta]", "gain[k]", "ema_on_ladder[beta]" to why a
        value is undetermined or extrapolated (absent when it is determined).
    """
    decays = [decay_value(b) for b in ema_decays]
    chosen = gaps if gaps is not None else (meas.two_point_gaps.tolist() or _DEFAULT_GAPS)
    gap_list = [gap_value("gap", k) for k in chosen]
    fit = fit if fit is not None else fit_timescales(meas, num_groups=num_groups, max_groups=max_groups)
    ladder_lrs = (meas.lr, *(b.lr for b in meas.ladder)) if ladder_ages is not None else ()
    if not any(g.amplitude > 0 for g in fit.groups):
        return _undetermined(fit, decays, gap_list, ladder_lrs)
    reasons: dict = {}
    lrs, lr_se, losses, loss_se = _ema_predictions(fit, decays, reasons)
    gains, gain_se = _gain_predictions(fit, meas, gap_list, reasons)
    rung_lrs, rungs, matched = _ladder_predictions(fit, meas, ladder_ages, losses, decays, reasons)
    return MeasuredPrediction(
        fit=fit,
        ema_decays=tuple(decays),
        equivalent_lr=tuple(map(float, lrs)),
        equivalent_lr_se=tuple(map(float, lr_se)),
        ema_loss=tuple(map(float, losses)),
        ema_loss_se=tuple(map(float, loss_se)),
        gaps=tuple(gap_list),
        gain=tuple(map(float, gains)),
        gain_se=tuple(map(float, gain_se)),
        ladder_lrs=tuple(rung_lrs),
        ladder_loss=rungs,
        equivalent_lr_on_ladder=matched,
        reasons=reasons,
    )
