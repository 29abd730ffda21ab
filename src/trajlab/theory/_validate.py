"""Input checks shared by the theory module: every bad value gets an error that names it and says why."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def nonnegative_array(name: str, values: ArrayLike) -> np.ndarray:
    """Return ``values`` as a float64 1-d array, raising if any entry is negative or not finite."""
    array = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if array.ndim != 1:
        raise ValueError(
            f"{name} must be a scalar or a 1-d array over eigen-directions, got shape {array.shape}"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, got {array[~np.isfinite(array)][:3].tolist()}")
    if np.any(array < 0):
        raise ValueError(
            f"{name} must be >= 0 (the model is a PSD quadratic with non-negative noise), "
            f"got {array[array < 0][:3].tolist()}"
        )
    return array


def positive_scalar(name: str, value: float) -> float:
    """Return ``value`` as a float, raising unless it is finite and > 0."""
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def momentum_value(momentum: float) -> float:
    """Heavy-ball momentum must lie in [0, 1): at 1 the velocity never forgets and nothing is stationary."""
    momentum = float(momentum)
    if not (0.0 <= momentum < 1.0):
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    return momentum


def stable_step(name: str, eps: np.ndarray, momentum: float) -> None:
    """Raise if some lr * h reaches the heavy-ball stability limit 2 (1 + momentum).

    The recursion x_{t+1} = (1 + mu - eps) x_t - mu x_{t-1} has both roots inside the unit circle iff
    0 <= mu < 1 and eps < 2 (1 + mu); at eps = 2 (1 + mu) a root sits on -1 and the variance diverges.
    """
    limit = 2.0 * (1.0 + momentum)
    bad = np.asarray(eps) >= limit
    if np.any(bad):
        worst = float(np.max(eps))
        raise ValueError(
            f"{name}: lr * curvature = {worst:.6g} reaches the stability limit "
            f"2 * (1 + momentum) = {limit:.6g}; "
            "SGD diverges there. Lower the learning rate or the largest curvature."
        )


def decay_value(decay: float) -> float:
    """An EMA decay must lie in [0, 1)."""
    decay = float(decay)
    if not (0.0 <= decay < 1.0):
        raise ValueError(f"EMA decay must be in [0, 1) (1 would never move), got {decay}")
    return decay


def gap_value(name: str, gap: int) -> int:
    """A gap between averaged iterates is a whole number of steps >= 1."""
    if int(gap) != gap or gap < 1:
        raise ValueError(f"{name} must be an integer number of steps >= 1, got {gap}")
    return int(gap)


def steps_value(name: str, steps: int, minimum: int = 0) -> int:
    """A step count is an integer >= ``minimum``."""
    if int(steps) != steps or steps < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {steps}")
    return int(steps)
