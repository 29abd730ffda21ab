"""Plain functions behind ``trajlab theory <subcommand>``; cli.py parses argv and calls these.

Each returns a JSON-serialisable dict. With ``json=False`` the dict also carries ``text``, a short
human-readable summary to print.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trajlab.theory._rules import RuleSpec
from trajlab.theory.maps import equivalent_lr, equivalent_schedule
from trajlab.theory.nqm import NoisyQuadratic
from trajlab.theory.predictions import best_ema_decay, two_point_gain


def _rule(
    ema: float | None, swa_window: int | None, two_point_gap: int | None, swa_start: int = 0
) -> RuleSpec:
    given = [x is not None for x in (ema, swa_window, two_point_gap)]
    if sum(given) != 1:
        raise ValueError("give exactly one of --ema DECAY, --swa-window STEPS, --two-point-gap STEPS")
    if ema is not None:
        from trajlab.theory._validate import decay_value

        return RuleSpec("ema", decay=decay_value(ema))
    if swa_window is not None:
        from trajlab.theory._validate import gap_value

        return RuleSpec("swa", start_step=swa_start, window=gap_value("swa window", swa_window))
    from trajlab.theory._validate import gap_value

    return RuleSpec("two_point", gap=gap_value("two-point gap", two_point_gap), points=2)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def equivalent_schedule_command(
    lr: float,
    curvature: float,
    steps: int,
    ema: float | None = None,
    swa_window: int | None = None,
    two_point_gap: int | None = None,
    momentum: float = 0.0,
    json: bool = False,
) -> dict:
    """The lr schedule equivalent to averaging an SGD(lr) run (isotropic curvature), and its end value."""
    rule = _rule(ema, swa_window, two_point_gap)
    lrs = equivalent_schedule(rule, lr, curvature, steps, momentum)
    out = {
        "rule": rule.kind,
        "lr": lr,
        "curvature": curvature,
        "steps": steps,
        "momentum": momentum,
        "schedule": lrs,
        "final_lr": float(lrs[-1]),
        "equivalent_constant_lr": equivalent_lr(rule, lr, curvature, momentum),
    }
    if not json:
        picks = np.unique(np.geomspace(1, steps, 8).astype(int))
        rows = "\n".join(f"  step {t:>8d}: lr {lrs[t - 1]:.6g}" for t in picks)
        out["text"] = (
            f"{rule.kind} of SGD(lr={lr}, h={curvature}) == SGD with this schedule "
            f"(exact, isotropic):\n{rows}\n"
            f"equivalent constant lr (same stationary loss): {out['equivalent_constant_lr']:.6g}"
        )
    return _jsonable(out)


def equivalent_lr_command(
    lr: float,
    curvature: float,
    ema: float | None = None,
    swa_window: int | None = None,
    two_point_gap: int | None = None,
    momentum: float = 0.0,
    json: bool = False,
) -> dict:
    """The constant lr with the stationary loss of the averaged run."""
    rule = _rule(ema, swa_window, two_point_gap)
    value = equivalent_lr(rule, lr, curvature, momentum)
    out = {"rule": rule.kind, "lr": lr, "curvature": curvature, "equivalent_lr": value, "ratio": value / lr}
    if not json:
        out["text"] = f"{rule.kind}: equivalent constant lr {value:.6g} ({value / lr:.4f} x lr)"
    return _jsonable(out)


def two_point_gain_command(
    lr: float,
    curvature: float,
    noise: float = 1.0,
    gaps: tuple[int, ...] = (1, 10, 100, 1000, 10000),
    momentum: float = 0.0,
    json: bool = False,
) -> dict:
    """Stationary excess-loss ratio of two-point averaging against the gap."""
    result = two_point_gain(NoisyQuadratic(curvature, noise, lr, momentum), gaps)
    if not json:
        result["text"] = "\n".join(
            f"gap {k:>8d}: loss ratio {r:.4f}" for k, r in zip(result["gaps"], result["ratio"])
        )
    return _jsonable(result)


def best_ema_command(
    lr: float,
    curvature: float,
    noise: float,
    horizon_steps: int,
    start: float,
    momentum: float = 0.0,
    json: bool = False,
) -> dict:
    """Best EMA decay for a horizon from a start displaced by ``start`` along every direction."""
    result = best_ema_decay(NoisyQuadratic(curvature, noise, lr, momentum), horizon_steps, start)
    if not json:
        result["text"] = (
            f"best EMA decay for {horizon_steps} steps: {result['best_decay']:.6f} "
            f"(excess loss {result['best_excess_loss']:.4g} vs last iterate {result['sgd_excess_loss']:.4g})"
        )
    return _jsonable(result)
