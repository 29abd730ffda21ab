"""Stand-ins for trajlab.averaging.rules with the agreed kernel interface (tests only): ``weights(step)`` and,
for the standard shapes, ``closed_form()``."""

from __future__ import annotations

import numpy as np


class EMA:
    def __init__(self, decay=None, half_life_steps=None, warmup=False, bias_correction=False):
        self.decay = decay
        self.warmup = warmup
        self.bias_correction = bias_correction

    def closed_form(self):
        return {"kind": "ema", "decay": self.decay}  # claimed even with bias_correction: theory must check

    def weights(self, step):
        w = (1 - self.decay) * self.decay ** np.arange(step, -1, -1, dtype=float)
        w[0] = self.decay**step
        if self.bias_correction:  # a different convention: theta_0 gets no weight
            w[0] = 0.0
            w /= w.sum()
        return w


class SWA:
    def __init__(self, start_step=0, window_steps=None):
        self.start_step = start_step
        self.window_steps = window_steps

    def closed_form(self):
        return {"kind": "swa", "start_step": self.start_step, "window": self.window_steps}

    def weights(self, step):
        first = (
            self.start_step
            if self.window_steps is None
            else max(self.start_step, step - self.window_steps + 1)
        )
        first = min(first, step)
        w = np.zeros(step + 1)
        w[first:] = 1.0 / (step + 1 - first)
        return w


class TwoPoint:
    def __init__(self, gap_steps):
        self.gap_steps = gap_steps

    def closed_form(self):
        return {"kind": "multi_point", "gap": self.gap_steps, "points": 2}

    def weights(self, step):
        w = np.zeros(step + 1)
        w[step] += 0.5
        w[max(step - self.gap_steps, 0)] += 0.5
        return w


class MultiPoint:
    def __init__(self, gap_steps, points):
        self.gap_steps = gap_steps
        self.points = points

    def closed_form(self):
        return {"kind": "multi_point", "gap": self.gap_steps, "points": self.points}

    def weights(self, step):
        w = np.zeros(step + 1)
        for i in range(self.points):
            w[max(step - i * self.gap_steps, 0)] += 1.0 / self.points
        return w


class PowerEMA:
    def __init__(self, gamma):
        self.gamma = gamma

    def weights(self, step):
        # theta-bar_t = (1 - b_t) theta-bar_{t-1} + b_t theta_t with b_t = ((gamma + 1) / (t + gamma + 1)).
        w = np.zeros(step + 1)
        w[0] = 1.0
        for t in range(1, step + 1):
            b = (self.gamma + 1) / (t + self.gamma + 1)
            w *= 1 - b
            w[t] = b
        return w
