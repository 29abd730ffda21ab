"""Learning-rate schedules as pure ``step -> lr`` functions.

``lr_at(step)`` is the learning rate used by step ``step`` (t >= 1 trains on B_t). All schedules are
built from a peak ``lr`` and optional linear warmup over ``warmup_steps`` (lr * t / warmup_steps).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass

Schedule = Callable[[int], float]


def _warmup(lr_fn: Schedule, warmup_steps: int) -> Schedule:
    if warmup_steps <= 0:
        return lr_fn

    def lr_at(step: int) -> float:
        if step <= warmup_steps:
            return lr_fn(step) * step / warmup_steps
        return lr_fn(step)

    return lr_at


def constant(lr: float, warmup_steps: int = 0) -> Schedule:
    return _warmup(lambda step: lr, warmup_steps)


def step_decay(
    lr: float, milestones_steps: tuple[int, ...], gamma: float = 0.1, warmup_steps: int = 0
) -> Schedule:
    """lr * gamma**k after the k-th milestone (a milestone m applies from step m + 1 on)."""
    ms = sorted(milestones_steps)
    return _warmup(lambda step: lr * gamma ** bisect.bisect_left(ms, step), warmup_steps)


def cosine(lr: float, total_steps: int, final_lr_fraction: float = 0.0, warmup_steps: int = 0) -> Schedule:
    """Cosine from lr (after warmup) to lr * final_lr_fraction at ``total_steps``."""
    span = max(total_steps - warmup_steps, 1)

    def lr_at(step: int) -> float:
        progress = min(max(step - warmup_steps, 0) / span, 1.0)
        return lr * (final_lr_fraction + (1 - final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))

    return _warmup(lr_at, warmup_steps)


def warmup_stable_decay(
    lr: float,
    total_steps: int,
    decay_steps: int,
    final_lr_fraction: float = 0.0,
    decay_shape: str = "linear",
    warmup_steps: int = 0,
) -> Schedule:
    """Constant lr, then a cooldown over the last ``decay_steps`` steps to lr * final_lr_fraction.

    Shapes of the cooldown factor f(p), p in [0, 1] the progress through it: linear 1 - p,
    cosine (1 + cos(pi p)) / 2, 1-sqrt 1 - sqrt(p) (Hägele et al. 2024).
    """
    decay_start = total_steps - decay_steps

    def lr_at(step: int) -> float:
        if decay_steps <= 0 or step <= decay_start:
            return lr
        p = min((step - decay_start) / decay_steps, 1.0)
        if decay_shape == "linear":
            f = 1 - p
        elif decay_shape == "cosine":
            f = 0.5 * (1 + math.cos(math.pi * p))
        else:
            f = 1 - math.sqrt(p)
        return lr * (final_lr_fraction + (1 - final_lr_fraction) * f)

    return _warmup(lr_at, warmup_steps)


def inverse_time(
    lr: float, start_step: int = 0, time_scale_steps: float = 1.0, warmup_steps: int = 0
) -> Schedule:
    """1/t decay after ``start_step``: lr / (1 + (step - start_step) / time_scale_steps).

    With time_scale_steps = 1 / (lr h) this is the schedule the noisy quadratic model maps SWA onto.
    """

    def lr_at(step: int) -> float:
        if step <= start_step:
            return lr
        return lr / (1 + (step - start_step) / time_scale_steps)

    return _warmup(lr_at, warmup_steps)


@dataclass(frozen=True)
class ScheduleSpec:
    """The fields of :class:`trajlab.config.ScheduleConfig`, kept here so ``train`` needs no config."""

    name: str
    warmup_steps: int = 0
    milestones_steps: tuple[int, ...] = ()
    gamma: float = 0.1
    final_lr_fraction: float = 0.0
    decay_steps: int = 0
    decay_shape: str = "linear"
    start_step: int = 0
    time_scale_steps: float = 1.0


def build_schedule(spec: ScheduleSpec, lr: float, total_steps: int) -> Schedule:
    """The schedule named by ``spec`` as a ``step -> lr`` function."""
    if spec.name == "constant":
        return constant(lr, spec.warmup_steps)
    if spec.name == "step":
        return step_decay(lr, spec.milestones_steps, spec.gamma, spec.warmup_steps)
    if spec.name == "cosine":
        return cosine(lr, total_steps, spec.final_lr_fraction, spec.warmup_steps)
    if spec.name == "wsd":
        return warmup_stable_decay(
            lr, total_steps, spec.decay_steps, spec.final_lr_fraction, spec.decay_shape, spec.warmup_steps
        )
    if spec.name == "inverse_time":
        return inverse_time(lr, spec.start_step, spec.time_scale_steps, spec.warmup_steps)
    raise ValueError(f"unknown schedule {spec.name!r}: constant, step, cosine, wsd, inverse_time")
