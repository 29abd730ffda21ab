"""Noisy quadratic model: closed forms, exact simulator, averaging <-> schedule maps, predictions, fitting.

Takes numbers, not models (numpy core). See docs/theory.md for the derivations.
"""

from trajlab.theory.fit import FitResult, fit
from trajlab.theory.maps import (
    averaging_for_schedule,
    equivalent_lr,
    equivalent_schedule,
    minima_weights,
    schedule_error,
    sgd_iterates,
)
from trajlab.theory.nqm import NoisyQuadratic
from trajlab.theory.predictions import (
    best_ema_decay,
    ema_vs_reduced_lr,
    schedule_excess_loss,
    swa_vs_cooldown,
    two_point_gain,
)
from trajlab.theory.simulate import simulate

__all__ = [
    "FitResult",
    "NoisyQuadratic",
    "averaging_for_schedule",
    "best_ema_decay",
    "ema_vs_reduced_lr",
    "equivalent_lr",
    "equivalent_schedule",
    "fit",
    "minima_weights",
    "schedule_error",
    "schedule_excess_loss",
    "sgd_iterates",
    "simulate",
    "swa_vs_cooldown",
    "two_point_gain",
]
