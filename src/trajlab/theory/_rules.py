"""Read averaging rules through their public kernel API, so theory never imports ``trajlab.averaging``.

A rule is anything with ``weights(step) -> np.ndarray`` of shape (step + 1,) (the weight of theta_j,
j = 0..step, in the average held at ``step``), or a plain weights array. A rule whose ``closed_form()``
names a standard shape (``{"kind": "ema", "decay": d}``, ``{"kind": "multi_point", "gap": k, "points": n}``,
``{"kind": "swa", "start_step": s, "window": w}``) gets the model's exact closed forms; before trusting it,
the rule's own ``weights`` are compared with the shape's, and the general weighted-sum formula is used if
they differ (a different convention must never give a silently wrong answer). Wherever a rule is given,
its weights come from the rule itself; the shapes' formulas here serve the specs the theory builds from
plain numbers (the CLI's ``--ema 0.99``, a gain curve over gaps).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from trajlab.theory._validate import decay_value, gap_value, steps_value

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuleSpec:
    """A normalised description of an averaging rule.

    kind is one of "none", "ema", "two_point", "multi_point", "swa", "weights". ``source`` is the
    rule object (for "weights" rules) or the fixed weights array (oldest first, last = current iterate).
    """

    kind: str
    decay: float = 0.0
    gap: int = 1
    points: int = 1
    start_step: int = 0
    window: int | None = None
    source: Any = None

    def weights(self, step: int) -> np.ndarray:
        """Weights of theta_0..theta_step in the average held at ``step`` (shape (step + 1,)): the rule's
        own (``source.weights``) when there is a rule, else the shape's (:meth:`shape_weights`)."""
        if callable(getattr(self.source, "weights", None)):
            w = np.asarray(self.source.weights(step), dtype=np.float64)
            if w.shape != (step + 1,):
                raise ValueError(f"rule.weights({step}) must have shape ({step + 1},), got {w.shape}")
            return w
        return self.shape_weights(step)

    def shape_weights(self, step: int) -> np.ndarray:
        """The weights the closed forms assume for this kind (a fixed array for ``"weights"`` specs)."""
        if self.kind == "none":
            w = np.zeros(step + 1)
            w[-1] = 1.0
            return w
        if self.kind == "ema":
            powers = self.decay ** np.arange(step, -1, -1, dtype=np.float64)
            w = (1.0 - self.decay) * powers
            w[0] = self.decay**step
            return w
        if self.kind in ("two_point", "multi_point"):
            w = np.zeros(step + 1)
            for i in range(self.points):
                w[max(step - i * self.gap, 0)] += 1.0 / self.points
            return w
        if self.kind == "swa":
            first = self.start_step if self.window is None else max(self.start_step, step - self.window + 1)
            first = min(first, step)
            w = np.zeros(step + 1)
            w[first:] = 1.0 / (step + 1 - first)
            return w
        kernel = np.asarray(self.source, dtype=np.float64)
        if step + 1 < kernel.size:
            raise ValueError(f"a fixed weights array of length {kernel.size} needs step >= {kernel.size - 1}")
        w = np.zeros(step + 1)
        w[step + 1 - kernel.size :] = kernel
        return w

    @property
    def time_steps(self) -> int:
        """The longest memory of the rule in steps (for burn-in and buffers)."""
        if self.kind == "ema":
            return int(np.ceil(1.0 / max(1.0 - self.decay, 1e-12)))
        if self.kind in ("two_point", "multi_point"):
            return self.gap * (self.points - 1)
        if self.kind == "swa":
            return self.window or 0
        if self.kind == "weights" and not callable(getattr(self.source, "weights", None)):
            return int(np.asarray(self.source).size)
        return 0


def _matches(spec: RuleSpec, rule: Any, step: int) -> bool:
    try:
        theirs = np.asarray(rule.weights(step), dtype=np.float64)
    except Exception:  # a rule that cannot answer is treated as a general rule
        return False
    ours = spec.shape_weights(step)
    return theirs.shape == ours.shape and np.allclose(theirs, ours, rtol=1e-9, atol=1e-12)


def describe_rule(rule: Any) -> RuleSpec:
    """Normalise ``rule`` (None, a weights array, or a duck-typed rule object) into a RuleSpec.

    Raises:
        TypeError: if ``rule`` is neither None, an array, nor has a ``weights`` method.
        ValueError: for a decay outside [0, 1), a gap < 1, or a weights array that does not sum to 1.
    """
    if rule is None:
        return RuleSpec("none")
    if isinstance(rule, RuleSpec):
        return rule
    if isinstance(rule, (np.ndarray, list, tuple)):
        w = np.asarray(rule, dtype=np.float64)
        if w.ndim != 1 or w.size == 0 or not np.all(np.isfinite(w)):
            raise ValueError("a weights array must be a non-empty finite 1-d array (oldest iterate first)")
        if abs(w.sum() - 1.0) > 1e-8:
            raise ValueError(f"averaging weights must sum to 1 (an average), got sum {w.sum():.12g}")
        return RuleSpec("weights", source=w)
    if not callable(getattr(rule, "weights", None)):
        raise TypeError(
            f"expected an averaging rule with .weights(step) or a weights array, got {type(rule)!r}"
        )
    form = rule.closed_form() if callable(getattr(rule, "closed_form", None)) else None
    spec = RuleSpec("weights", source=rule)
    candidate, probe = _candidate(form, rule)
    if candidate is not None:
        if _matches(candidate, rule, probe):
            spec = candidate
        else:
            logger.info(
                "%r: weights differ from its closed form's convention; using the general formula", rule
            )
    return spec


def _candidate(form: dict[str, Any] | None, rule: Any) -> tuple[RuleSpec | None, int]:
    """The closed-form spec a rule's ``closed_form()`` describes, and the step to compare weights at."""
    kind = (form or {}).get("kind")
    if kind == "ema":
        return RuleSpec("ema", decay=decay_value(form["decay"]), source=rule), 40
    if kind == "multi_point":
        gap = gap_value("gap_steps", form["gap"])
        points = steps_value("points", form["points"], minimum=1)
        name = "two_point" if points == 2 else "multi_point"
        return RuleSpec(name, gap=gap, points=points, source=rule), gap * points + 3
    if kind == "swa":
        start = steps_value("start_step", form["start_step"])
        window = None if form.get("window") is None else gap_value("window_steps", form["window"])
        return RuleSpec("swa", start_step=start, window=window, source=rule), start + (window or 5) + 7
    return None, 0
