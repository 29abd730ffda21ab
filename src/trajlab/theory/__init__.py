"""Noisy quadratic model: closed forms, exact simulator, averaging <-> schedule maps, predictions, fitting,
heavy-ball closed forms over a spectrum, and the multi-timescale fit to a run's measurements.

Takes numbers, not models (numpy core). See docs/theory.md for the derivations.
"""

from trajlab.theory.fit import FitResult, fit
from trajlab.theory.heavy_ball import (
    autocorrelation,
    ema_variance_ratio,
    equivalent_lr_for_ratio,
    kernel_variance_ratio,
    lr_drop_variance_ratio,
    relaxation_steps,
    schedule_variance_ratio,
    two_point_variance_ratio,
)
from trajlab.theory.maps import (
    averaging_for_schedule,
    equivalent_lr,
    equivalent_schedule,
    minima_weights,
    schedule_error,
    sgd_iterates,
)
from trajlab.theory.measured import MeasuredPrediction, ladder_equivalent_lr, predict_from_measurements
from trajlab.theory.measurements import LadderBranch, RunMeasurements
from trajlab.theory.multiscale import MultiscaleFit, TimescaleGroup, fit_timescales
from trajlab.theory.nqm import NoisyQuadratic
from trajlab.theory.predictions import (
    best_ema_decay,
    ema_vs_reduced_lr,
    schedule_excess_loss,
    swa_vs_cooldown,
    two_point_gain,
)
from trajlab.theory.simulate import simulate
from trajlab.theory.spectrum import (
    ema_equivalent_lr,
    ema_excess_loss,
    equivalent_lr_for_ratios,
    excess_loss_ratio,
    from_loss_weights,
    kernel_equivalent_lr,
    loss_weights,
    lr_drop_excess_loss,
    two_point_equivalent_lr,
    two_point_gain_curve,
)

__all__ = [
    "FitResult",
    "LadderBranch",
    "MeasuredPrediction",
    "MultiscaleFit",
    "NoisyQuadratic",
    "RunMeasurements",
    "TimescaleGroup",
    "autocorrelation",
    "averaging_for_schedule",
    "best_ema_decay",
    "ema_equivalent_lr",
    "ema_excess_loss",
    "ema_variance_ratio",
    "ema_vs_reduced_lr",
    "equivalent_lr",
    "equivalent_lr_for_ratio",
    "equivalent_lr_for_ratios",
    "equivalent_schedule",
    "excess_loss_ratio",
    "fit",
    "fit_timescales",
    "from_loss_weights",
    "kernel_equivalent_lr",
    "kernel_variance_ratio",
    "ladder_equivalent_lr",
    "loss_weights",
    "lr_drop_excess_loss",
    "lr_drop_variance_ratio",
    "schedule_variance_ratio",
    "minima_weights",
    "predict_from_measurements",
    "relaxation_steps",
    "schedule_error",
    "schedule_excess_loss",
    "sgd_iterates",
    "simulate",
    "swa_vs_cooldown",
    "two_point_equivalent_lr",
    "two_point_gain",
    "two_point_gain_curve",
    "two_point_variance_ratio",
]
