"""``trajlab theory SUBCOMMAND``: the noisy quadratic model's averaging <-> schedule maps and predictions.

Subcommands (each with ``--json`` and ``--plot PATH.png``):

* ``equivalent-schedule``: the lr schedule whose last iterate equals an average of an SGD(lr) run;
* ``equivalent-lr``: the constant lr with the averaged run's stationary loss;
* ``two-point-gain``: the stationary loss of 1/2 (theta_t + theta_{t-k}) against the gap k;
* ``best-ema``: the EMA decay with the lowest expected loss at a horizon, from a displaced start.

The numbers come from :mod:`trajlab.theory` (the rules are :mod:`trajlab.averaging`'s, read by the theory
through their kernel API), wrapped in the plain functions at the end of this module (JSON-safe dicts);
plots from :mod:`trajlab.reports.theory_plots`. The theory module's ``ValueError`` messages (negative
curvature, lr past the stability limit, decay outside [0, 1), gap < 1, ...) become one-line usage errors.
Only the standard library is imported here at module level, so ``trajlab --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trajlab.commands.io import UsageError, emit

log = logging.getLogger(__name__)

PLOT_SUFFIXES = (".png", ".pdf", ".svg")


# ------------------------------------------------------------------------------------------ parser


def register(sub: Any) -> None:
    """Add ``theory`` and its subcommands to ``trajlab``'s subparsers."""
    p = sub.add_parser(
        "theory",
        help="noisy quadratic model: averaging <-> schedule maps and predictions",
        description="Closed forms of the noisy quadratic model (arXiv 2301.02312, sec. 3): which lr "
        "schedule an average equals, the equivalent constant lr, the gain of two-point averaging, the best "
        "EMA decay. Each subcommand prints a summary, or JSON with --json, and can save a plot.",
    )
    tsub = p.add_subparsers(dest="theory_command", metavar="SUBCOMMAND")
    tsub.required = True

    q = tsub.add_parser(
        "equivalent-schedule",
        help="the lr schedule whose last iterate equals an averaged SGD run",
        description="The plain-SGD lr schedule (steps 1..STEPS) whose last iterate equals the average of "
        "an SGD(lr) run on the isotropic model with curvature h, exactly, on every noise sequence. "
        "Example: trajlab theory equivalent-schedule --ema 0.999 --lr 0.1 --curvature 0.5 --steps 5000",
    )
    _add_sgd_args(q)
    _add_rule_args(q)
    q.add_argument("--steps", type=int, required=True, help="the step T whose average is mapped (>= 1)")
    _add_output_args(q)
    q.set_defaults(func=cmd_equivalent_schedule)

    q = tsub.add_parser(
        "equivalent-lr",
        help="the constant lr with the averaged run's stationary loss",
        description="The constant lr whose stationary loss equals that of the average (isotropic model). "
        "--plot sweeps the rule's parameter (decay, gap or window) and marks the one asked for. "
        "Example: trajlab theory equivalent-lr --two-point-gap 1000 --lr 0.1 --curvature 0.5",
    )
    _add_sgd_args(q)
    _add_rule_args(q, swa_start=False)
    _add_output_args(q)
    q.set_defaults(func=cmd_equivalent_lr)

    q = tsub.add_parser(
        "two-point-gain",
        help="stationary loss of two-point averaging against the gap",
        description="Stationary excess loss of 1/2 (theta_t + theta_(t-k)) relative to SGD at lr, for each "
        "gap k, with SGD at lr/2 for comparison. Several --curvature values make a spectrum. "
        "Example: trajlab theory two-point-gain --lr 0.1 --curvature 0.5 0.05 --gaps 1,10,100,1000",
    )
    _add_sgd_args(q, spectrum=True)
    q.add_argument("--noise", type=float, nargs="+", default=[1.0], help="per-batch minima variance s^2")
    q.add_argument(
        "--gaps", type=_int_list, default=(1, 10, 100, 1000, 10000), help="comma-separated gaps in steps"
    )
    _add_output_args(q)
    q.set_defaults(func=cmd_two_point_gain)

    q = tsub.add_parser(
        "best-ema",
        help="the EMA decay with the lowest loss at a horizon",
        description="The EMA decay minimising the expected excess loss of the EMA after HORIZON steps of "
        "SGD(lr) started at distance START from the minimum along every direction (exact moments). "
        "Example: trajlab theory best-ema --lr 0.1 --curvature 0.5 --noise 1 --horizon-steps 1000 --start 1",
    )
    _add_sgd_args(q, spectrum=True)
    q.add_argument("--noise", type=float, nargs="+", default=[1.0], help="per-batch minima variance s^2")
    q.add_argument("--horizon-steps", type=int, required=True, help="steps of training before reading")
    q.add_argument(
        "--start", type=float, default=1.0, help="initial displacement from the minimum (default: 1)"
    )
    _add_output_args(q)
    q.set_defaults(func=cmd_best_ema)


def _add_sgd_args(p: argparse.ArgumentParser, spectrum: bool = False) -> None:
    p.add_argument("--lr", type=float, required=True, help="learning rate of the (averaged) SGD run")
    if spectrum:
        p.add_argument(
            "--curvature", type=float, nargs="+", required=True, help="curvature h (several: a spectrum)"
        )
    else:
        p.add_argument("--curvature", type=float, required=True, help="curvature h of the isotropic model")
    p.add_argument("--momentum", type=float, default=0.0, help="heavy-ball momentum in [0, 1) (default 0)")


def _add_rule_args(p: argparse.ArgumentParser, swa_start: bool = True) -> None:
    g = p.add_argument_group("averaging rule (exactly one kind)")
    g.add_argument("--ema", type=float, metavar="DECAY", help="EMA with per-step decay in [0, 1)")
    g.add_argument("--two-point-gap", type=int, metavar="STEPS", help="1/2 (theta_t + theta_(t-k))")
    g.add_argument("--swa-window", type=int, metavar="STEPS", help="uniform average of the last STEPS")
    if swa_start:
        g.add_argument(
            "--swa-start",
            type=int,
            metavar="STEP",
            help="uniform average from STEP on (with --swa-window too)",
        )


def _add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.add_argument("--plot", metavar="PATH.png", help="save a plot (.png, .pdf or .svg)")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


# ------------------------------------------------------------------------------------------ handlers


def cmd_equivalent_schedule(args: argparse.Namespace) -> int:
    """Handler of ``trajlab theory equivalent-schedule``."""
    _check_plot_path(args.plot)
    rule_kwargs = _rule_kwargs(args)
    if args.swa_start is not None:
        result = _run(_swa_start_schedule, args, rule_kwargs)
    else:
        result = _run(
            equivalent_schedule_command,
            lr=args.lr,
            curvature=args.curvature,
            steps=args.steps,
            momentum=args.momentum,
            json=args.json,
            **rule_kwargs,
        )

    def figure() -> Any:
        from trajlab.reports.theory_plots import plot_equivalent_schedule

        return plot_equivalent_schedule(
            result["schedule"], base_lr=args.lr, title=f"lr schedule equivalent to {result['rule']}"
        )

    return _finish(args, result, figure)


def cmd_equivalent_lr(args: argparse.Namespace) -> int:
    """Handler of ``trajlab theory equivalent-lr``."""
    _check_plot_path(args.plot)
    rule_kwargs = _rule_kwargs(args)
    result = _run(
        equivalent_lr_command,
        lr=args.lr,
        curvature=args.curvature,
        momentum=args.momentum,
        json=args.json,
        **rule_kwargs,
    )
    return _finish(args, result, lambda: _equivalent_lr_sweep_figure(args, rule_kwargs, result))


def cmd_two_point_gain(args: argparse.Namespace) -> int:
    """Handler of ``trajlab theory two-point-gain``."""
    _check_plot_path(args.plot)
    result = _run(
        two_point_gain_command,
        lr=args.lr,
        curvature=_scalar_or_list(args.curvature),
        noise=_scalar_or_list(args.noise),
        gaps=args.gaps,
        momentum=args.momentum,
        json=args.json,
    )

    def figure() -> Any:
        from trajlab.reports.theory_plots import plot_two_point_gain

        return plot_two_point_gain(result)

    return _finish(args, result, figure)


def cmd_best_ema(args: argparse.Namespace) -> int:
    """Handler of ``trajlab theory best-ema``."""
    _check_plot_path(args.plot)
    result = _run(
        best_ema_command,
        lr=args.lr,
        curvature=_scalar_or_list(args.curvature),
        noise=_scalar_or_list(args.noise),
        horizon_steps=args.horizon_steps,
        start=args.start,
        momentum=args.momentum,
        json=args.json,
    )

    def figure() -> Any:
        from trajlab.reports.theory_plots import plot_best_ema_decay

        return plot_best_ema_decay(result)

    return _finish(args, result, figure)


# ------------------------------------------------------------------------------------------ helpers


def _run(fn: Callable[..., dict], *args: Any, **kwargs: Any) -> dict:
    """Call a theory function; its ``ValueError`` (bad numbers) becomes a one-line usage error."""
    try:
        return fn(*args, **kwargs)
    except ValueError as e:
        raise UsageError(str(e)) from e


def _rule_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    swa_start = getattr(args, "swa_start", None)
    kinds = [
        name
        for name, given in (
            ("--ema", args.ema is not None),
            ("--two-point-gap", args.two_point_gap is not None),
            ("--swa-window/--swa-start", args.swa_window is not None or swa_start is not None),
        )
        if given
    ]
    if len(kinds) != 1:
        options = "--ema DECAY, --two-point-gap STEPS, --swa-window STEPS" + (
            ", --swa-start STEP" if hasattr(args, "swa_start") else ""
        )
        got = f" (got {' and '.join(kinds)})" if kinds else ""
        raise UsageError(f"give exactly one averaging rule: {options}{got}")
    return {"ema": args.ema, "two_point_gap": args.two_point_gap, "swa_window": args.swa_window}


def _swa_start_schedule(args: argparse.Namespace, rule_kwargs: dict[str, Any]) -> dict:
    """equivalent-schedule for SWA from a start step (:func:`equivalent_schedule_command` covers windows
    from step 0 only).

    The rule is :class:`trajlab.averaging.SWA`, which :mod:`trajlab.theory` recognises and maps exactly.
    SWA without a window has no stationary variance, so ``equivalent_constant_lr`` is ``None`` then.
    """
    import numpy as np

    from trajlab.averaging import SWA
    from trajlab.theory import equivalent_lr, equivalent_schedule

    rule = SWA(start_step=args.swa_start, window_steps=rule_kwargs["swa_window"])
    lrs = np.asarray(equivalent_schedule(rule, args.lr, args.curvature, args.steps, args.momentum))
    constant = None
    if rule.window_steps is not None:
        constant = float(equivalent_lr(rule, args.lr, args.curvature, args.momentum))
    out: dict[str, Any] = {
        "rule": "swa",
        "swa_start": rule.start_step,
        "swa_window": rule.window_steps,
        "lr": args.lr,
        "curvature": args.curvature,
        "steps": args.steps,
        "momentum": args.momentum,
        "schedule": lrs.tolist(),
        "final_lr": float(lrs[-1]),
        "equivalent_constant_lr": constant,
    }
    if not args.json:
        picks = sorted({int(t) for t in np.geomspace(1, args.steps, 8).astype(int)} | {args.swa_start})
        rows = "\n".join(f"  step {t:>8d}: lr {lrs[t - 1]:.6g}" for t in picks if 1 <= t <= args.steps)
        tail = (
            f"equivalent constant lr (same stationary loss): {constant:.6g}"
            if constant is not None
            else "no equivalent constant lr: SWA without a window keeps shrinking (no stationary loss)"
        )
        out["text"] = (
            f"{rule.name} of SGD(lr={args.lr}, h={args.curvature}) == SGD with this schedule "
            f"(exact, isotropic):\n{rows}\n{tail}"
        )
    return out


def _equivalent_lr_sweep_figure(args: argparse.Namespace, rule_kwargs: dict[str, Any], result: dict) -> Any:
    """Equivalent lr / lr against the rule's parameter (log axes), marking the value asked for."""
    import numpy as np
    from matplotlib.figure import Figure

    if rule_kwargs["ema"] is not None:
        asked = 1.0 - rule_kwargs["ema"]
        xs = np.unique(np.concatenate([np.geomspace(1e-5, 0.5, 40), [asked]]))
        values = [(float(x), {"ema": 1.0 - x}) for x in xs]
        xlabel = "1 - EMA decay"
    else:
        key = "two_point_gap" if rule_kwargs["two_point_gap"] is not None else "swa_window"
        asked = rule_kwargs[key]
        ks = np.unique(np.concatenate([np.geomspace(1, max(100 * asked, 1000), 40).astype(int), [asked]]))
        values = [(float(k), {key: int(k)}) for k in ks]
        xlabel = "gap k (steps)" if key == "two_point_gap" else "SWA window (steps)"
    ratios = []
    for _, kw in values:
        full = {"ema": None, "two_point_gap": None, "swa_window": None, **kw}
        r = _run(equivalent_lr_command, lr=args.lr, curvature=args.curvature, momentum=args.momentum, **full)
        ratios.append(r["ratio"])
    xs = [x for x, _ in values]
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    ax.loglog(xs, ratios, "-", label=f"{result['rule']} of SGD(lr={args.lr}, h={args.curvature})")
    ax.plot([asked], [result["ratio"]], "o", color="C3", label=f"asked: {result['ratio']:.4g} x lr")
    ax.set(title="Equivalent constant learning rate", xlabel=xlabel, ylabel="equivalent lr / lr")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return fig


def _scalar_or_list(values: list[float]) -> float | list[float]:
    return values[0] if len(values) == 1 else list(values)


def _check_plot_path(path: str | None) -> None:
    """Refuse an unsupported plot format before computing anything."""
    if path is not None and Path(path).suffix.lower() not in PLOT_SUFFIXES:
        raise UsageError(f"--plot {path}: use a file name ending in {', '.join(PLOT_SUFFIXES)}")


def _finish(args: argparse.Namespace, result: dict, figure: Callable[[], Any]) -> int:
    """Save the plot (if asked), then print the JSON or the text summary."""
    if args.plot:
        path = Path(args.plot)
        from trajlab.files import make_dirs, save_figure_atomic

        make_dirs(path.parent)
        save_figure_atomic(figure(), path, dpi=120)
        log.info("plot written to %s", path)
    text = result.pop("text", None)
    if args.json or text is None:
        emit(json.dumps(result))
    else:
        emit(text)
    return 0


# ------------------------------------------------------------------------------------------ computations
# Plain functions behind the subcommands: numbers in, a JSON-serialisable dict out (with ``json=False`` it
# also carries ``text``, a short summary to print).


def _averaging_rule(
    ema: float | None, swa_window: int | None, two_point_gap: int | None, swa_start: int = 0
) -> tuple[Any, str]:
    """The averaging rule asked for and its short kind (``ema``, ``swa``, ``two_point``)."""
    from trajlab.averaging import EMA, SWA, TwoPoint

    given = [x is not None for x in (ema, swa_window, two_point_gap)]
    if sum(given) != 1:
        raise ValueError("give exactly one of --ema DECAY, --swa-window STEPS, --two-point-gap STEPS")
    if ema is not None:
        return EMA(decay=ema), "ema"
    if swa_window is not None:
        if swa_window < 1:
            raise ValueError(f"swa window must be >= 1 step, got {swa_window}")
        return SWA(start_step=swa_start, window_steps=swa_window), "swa"
    if two_point_gap < 1:
        raise ValueError(f"two-point gap must be >= 1 step, got {two_point_gap}")
    return TwoPoint(gap_steps=two_point_gap), "two_point"


def _jsonable(value: Any) -> Any:
    import numpy as np

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
    import numpy as np

    from trajlab.theory import equivalent_lr, equivalent_schedule

    rule, kind = _averaging_rule(ema, swa_window, two_point_gap)
    lrs = equivalent_schedule(rule, lr, curvature, steps, momentum)
    out = {
        "rule": kind,
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
            f"{kind} of SGD(lr={lr}, h={curvature}) == SGD with this schedule "
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
    from trajlab.theory import equivalent_lr

    rule, kind = _averaging_rule(ema, swa_window, two_point_gap)
    value = equivalent_lr(rule, lr, curvature, momentum)
    out = {"rule": kind, "lr": lr, "curvature": curvature, "equivalent_lr": value, "ratio": value / lr}
    if not json:
        out["text"] = f"{kind}: equivalent constant lr {value:.6g} ({value / lr:.4f} x lr)"
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
    from trajlab.theory import NoisyQuadratic, two_point_gain

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
    from trajlab.theory import NoisyQuadratic, best_ema_decay

    result = best_ema_decay(NoisyQuadratic(curvature, noise, lr, momentum), horizon_steps, start)
    if not json:
        result["text"] = (
            f"best EMA decay for {horizon_steps} steps: {result['best_decay']:.6f} "
            f"(excess loss {result['best_excess_loss']:.4g} vs last iterate {result['sgd_excess_loss']:.4g})"
        )
    return _jsonable(result)
