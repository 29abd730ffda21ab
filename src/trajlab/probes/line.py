"""The paper's first measurement: the loss of a fixed batch along a line, f(lr) = L_B(theta - lr d).

With d = g_B (the batch's own gradient) the paper reports f is close to a parabola and that its minimum
f(lr*) is far below f(0). :func:`line_profile` measures f on a grid, fits the parabola on [0, 2 lr*],
compares the fitted curvature with an HVP, evaluates control batches (held-out data) along the same line
and returns everything with its cost.

Grids (``lrs`` / ``lr_guess``):

* ``lrs=[...]``: a fixed grid.
* default, adaptive: from ``1e-3 * f(0) / (g . d)`` (the scale of lr*: a non-negative quadratic loss has
  lr* <= 2 f(0) / |g|^2) the lr doubles until the loss rises again past twice the best lr, then the
  remaining points of ``num_points`` are spread uniformly over [0, 2 lr*].
* ``lr_guess=`` (e.g. the previous checkpoint's lr*): bracketing plus successive parabolic
  interpolation using f(0) and the exact slope f'(0) = -g . d, at most ``max_forwards`` forwards.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from trajlab.probes._functional import (
    Batch,
    CostLedger,
    CostMeter,
    FunctionalLoss,
    LossFn,
    Params,
    check_direction,
    detached_buffers,
    detached_params,
    is_batch_norm,
    prepare_batch,
    probe_mode,
    tree_axpy,
    tree_dot,
    tree_norm,
)
from trajlab.probes.curvature import DEFAULT_HVP_METHOD, HVPMethod, grad_and_hvp
from trajlab.probes.quadratic import fit_quadratic, fit_window, parabola_from_slope, parabola_through

logger = logging.getLogger(__name__)

EVALUATIONS = ("loop", "vmap")


@dataclass(frozen=True)
class QuadraticFit:
    """``f(lr) ~= a lr^2 + b lr + c`` fitted on the ``n_points`` measured points in [lr_min, lr_max]."""

    a: float
    b: float
    c: float
    r2: float
    lr_min: float
    lr_max: float
    n_points: int


@dataclass(frozen=True)
class LineProfile:
    """Result of :func:`line_profile` (all floats; JSON-ready through :meth:`to_dict`).

    Attributes:
        lrs: sorted step sizes evaluated, 0 included (f(0) comes with the gradient).
        losses: f(lr) = L_B(theta - lr d) at ``lrs``.
        control_losses: ``{name: losses}`` of each control batch along the same line, at ``lrs``.
        lr_star: the best step found (minimiser of f; parabola through the best point and its two
            neighbours, then measured).
        loss_at_lr_star: f(lr_star), measured when ``evaluate_at_star`` (else interpolated).
        loss_at_zero: f(0) = L_B(theta).
        one_step_fraction: f(lr*) / f(0), the fraction of the batch loss left after the best single step.
        control_at_lr_star: ``{name: L_C(theta - lr* d) / L_C(theta)}`` for each control batch.
        fit: parabola fitted on [0, fit_width * lr_star] (r2 is its R^2).
        curvature_fit: 2a / |d|^2, the fitted second derivative along the unit direction.
        curvature_hvp: d^T H d / |d|^2 by an HVP (nan if ``hvp=False``).
        lr_star_hvp: g . d / d^T H d, lr* of the local second-order model (|g|^2 / g^T H g along g).
        grad_norm: |g| of the batch loss (weight decay excluded).
        direction_norm: |d|.
        grad_dot_direction: g . d (= -f'(0)).
        bracketed: False when f was still falling at the largest lr tried (lr_star is then a lower bound).
        grid: ``"fixed"``, ``"adaptive"`` or ``"adaptive_from_guess"``.
        direction: ``"gradient"`` or ``"given"``.
        bn: ``"batch"`` or ``"running"``.
        weight_decay: coefficient lambda added to the direction as d = g + lambda theta (when d is g).
        hvp_method: method used for ``curvature_hvp``.
        evaluation: ``"loop"`` or ``"vmap"``.
        cost: cost ledger.
    """

    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    control_losses: dict[str, tuple[float, ...]]
    lr_star: float
    loss_at_lr_star: float
    loss_at_zero: float
    one_step_fraction: float
    control_at_lr_star: dict[str, float]
    fit: QuadraticFit
    curvature_fit: float
    curvature_hvp: float
    lr_star_hvp: float
    grad_norm: float
    direction_norm: float
    grad_dot_direction: float
    bracketed: bool
    grid: str
    direction: str
    bn: str
    weight_decay: float
    hvp_method: str
    evaluation: str
    cost: CostLedger = field(default_factory=CostLedger)

    @property
    def r2(self) -> float:
        return self.fit.r2

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-serialisable dict (nan stays nan: use ``json.dumps(..., allow_nan=True)``)."""
        d = asdict(self)
        d["lrs"], d["losses"] = list(self.lrs), list(self.losses)
        d["control_losses"] = {k: list(v) for k, v in self.control_losses.items()}
        return d


class _Line:
    """f(lr) for one batch along theta - lr d, with loop or vmap evaluation of many lrs."""

    def __init__(self, floss: FunctionalLoss, params: Params, d: Params, evaluation: str, chunk: int):
        self.floss, self.params, self.d = floss, params, d
        self.evaluation, self.chunk = evaluation, chunk

    def losses(self, lrs: Sequence[float], batch: Batch) -> list[float]:
        if self.evaluation == "vmap" and len(lrs) > 1:
            return self._vmap_losses(lrs, batch)
        return [self.floss.forward(tree_axpy(-lr, self.d, self.params), batch) for lr in lrs]

    @torch.no_grad()
    def _vmap_losses(self, lrs: Sequence[float], batch: Batch) -> list[float]:
        out: list[float] = []
        floss = self.floss
        for start in range(0, len(lrs), self.chunk):
            lr_chunk = torch.tensor(lrs[start : start + self.chunk], dtype=torch.float64)
            k = lr_chunk.numel()
            # Stacked parameter sets [k, *shape]: theta - lr_k d for the k lrs of this chunk.
            stacked = {
                n: p.unsqueeze(0) - lr_chunk.to(p).view(-1, *([1] * p.dim())) * self.d[n].unsqueeze(0)
                for n, p in self.params.items()
            }
            # Buffers are stacked copies too: train-mode BN writes its running stats in place, which
            # under vmap must land on a batched tensor (and never on the model's buffer).
            buffers = {n: b.unsqueeze(0).repeat(k, *([1] * b.dim())) for n, b in floss.buffers.items()}

            def one(p: dict[str, Tensor], b: dict[str, Tensor]) -> Tensor:
                return floss.evaluate(p, b, batch)

            values = torch.func.vmap(one)(stacked, buffers)  # [k]
            floss.meter.forwards += k
            out.extend(float(v) for v in values)
        return out


def _local_minimum(xs: np.ndarray, fs: np.ndarray) -> tuple[float, float, bool]:
    """(lr*, interpolated f(lr*), bracketed) from the best point and its neighbours (xs sorted)."""
    i = int(np.argmin(fs))
    if i == len(xs) - 1:
        return float(xs[i]), float(fs[i]), False
    if i == 0:
        return float(xs[0]), float(fs[0]), True
    a, b, c = parabola_through(xs[i - 1 : i + 2], fs[i - 1 : i + 2])
    if not a > 0:
        return float(xs[i]), float(fs[i]), True
    x = min(max(-b / (2 * a), xs[i - 1]), xs[i + 1])
    return float(x), float(a * x * x + b * x + c), True


def _adaptive_grid(
    line: _Line, batch: Batch, pts: dict[float, float], slope0: float, num_points: int
) -> None:
    """Double the lr from 1e-3 of the natural scale until f rises past 2 lr_best, then fill [0, 2 lr*]."""
    f0 = pts[0.0]
    scale = f0 / -slope0 if (slope0 < 0 and f0 > 0) else 1.0
    lr, growths = 1e-3 * scale, 0
    while len(pts) < num_points and growths < 60:
        pts[lr] = line.losses([lr], batch)[0]
        best = min(pts, key=pts.get)
        if best > 0 and lr >= 2 * best * (1 - 1e-9) and pts[lr] > pts[best]:
            break
        lr, growths = lr * 2.0, growths + 1
    xs = np.array(sorted(pts))
    lr_star, _, bracketed = _local_minimum(xs, np.array([pts[x] for x in xs]))
    remaining = num_points - len(pts)
    if remaining > 0 and bracketed and lr_star > 0:
        # Uniform fill of (0, 2 lr*]: the fit window. Points already there are kept, not duplicated.
        fill = [float(x) for x in np.linspace(0, 2 * lr_star, remaining + 1)[1:] if float(x) not in pts]
        pts.update(zip(fill, line.losses(fill, batch)))


def _adaptive_from_guess(
    line: _Line, batch: Batch, pts: dict[float, float], slope0: float, lr_guess: float, max_forwards: int
) -> None:
    """Bracket the minimum starting at ``lr_guess`` and refine it by successive parabolic interpolation.

    Each proposal is the vertex of a parabola: through (0, f0) with slope f'(0) and the best point while
    the minimum is not bracketed (when that vertex lies beyond the largest lr it is clamped to [1.5, 10] x
    that lr; when f rose at once, to [0.1, 0.67] x the smallest lr), then through the best point and its
    two neighbours (a golden-section step instead when that parabola is degenerate or its vertex would
    move less than a fifth of the way into its segment).
    Stops when a proposal moves lr* by less than 0.1% or after ``max_forwards`` forwards.
    """
    f0 = pts[0.0]
    lr = lr_guess
    for _ in range(max_forwards):
        pts[lr] = line.losses([lr], batch)[0]
        xs = np.array(sorted(pts))
        fs = np.array([pts[x] for x in xs])
        i = int(np.argmin(fs))
        if i == len(xs) - 1:  # best at the largest lr: the slope parabola says go back or expand
            a, b, _ = parabola_from_slope(f0, slope0, xs[i], fs[i])
            vertex = -b / (2 * a) if a > 0 else math.inf
            # Going back is informative only while no smaller lr was tried (else f is falling there).
            go_back = vertex < xs[i] and i == 1
            proposal = vertex if go_back else min(max(vertex, 1.5 * xs[i]), 10 * xs[i])
        elif i == 0:  # every lr tried is worse than lr = 0: shrink towards 0
            a, b, _ = parabola_from_slope(f0, slope0, xs[1], fs[1])
            vertex = -b / (2 * a) if a > 0 else 0.0
            proposal = min(max(vertex, 0.1 * xs[1]), 0.67 * xs[1])
        else:
            a, b, _ = parabola_through(xs[i - 1 : i + 2], fs[i - 1 : i + 2])
            lo, hi = xs[i - 1], xs[i + 1]
            vertex = -b / (2 * a) if a > 0 else math.nan
            if not lo < vertex < hi:  # degenerate: golden section into the larger half
                vertex = xs[i] + 0.382 * ((hi - xs[i]) if hi - xs[i] > xs[i] - lo else (lo - xs[i]))
            if abs(vertex - xs[i]) <= 1e-3 * xs[i]:
                return
            side = (lo - xs[i]) if vertex < xs[i] else (hi - xs[i])
            # Anti-creep: successive parabolic steps that keep one far end of the bracket (typically
            # lr = 0) crawl towards the minimum; a golden-section step into that segment cuts it.
            proposal = xs[i] + 0.382 * side if abs(vertex - xs[i]) < 0.2 * abs(side) else vertex
        if proposal in pts:
            return
        lr = float(proposal)


def line_profile(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Batch,
    lrs: Sequence[float] | None = None,
    direction: Mapping[str, Tensor] | None = None,
    eval_batches: Mapping[str, Batch] | Sequence[Batch] | None = None,
    bn: str = "batch",
    weight_decay: float = 0.0,
    *,
    lr_guess: float | None = None,
    num_points: int = 32,
    max_forwards: int = 8,
    fit_width: float = 2.0,
    evaluate_at_star: bool = True,
    hvp: bool = True,
    hvp_method: HVPMethod = DEFAULT_HVP_METHOD,
    evaluation: str = "loop",
    vmap_chunk_size: int = 8,
) -> LineProfile:
    """Loss of ``batch`` along theta - lr d, its quadratic fit, best one-step lr and curvature.

    With g = grad L_B(theta) and d = g + weight_decay * theta (or the given ``direction``), the measured
    line is f(lr) = L_B(theta - lr d). For an exactly quadratic L_B,

        f(lr) = f(0) - lr g.d + lr^2 d^T H d / 2,   lr* = g.d / d^T H d,
        f(lr*) = f(0) - (g.d)^2 / (2 d^T H d),

    so the fit coefficient a = d^T H d / 2 gives curvature_fit = 2a / |d|^2, compared with the HVP's
    d^T H d / |d|^2. The model is never mutated (parameters, buffers, grads, train/eval flags).

    Args:
        model: any module.
        loss_fn: the loss hook ``loss_fn(model, batch) -> scalar`` (the mean over the batch), or a
            criterion such as ``F.cross_entropy`` for ``(x, y)`` batches (see :mod:`trajlab.objective`).
        batch: the batch defining L_B: a tensor, tuple/list or dict (moved to the model's device).
        lrs: a fixed grid (positive); None for an adaptive grid.
        direction: ``{name: tensor}`` to move along instead of the gradient (e.g. the update actually
            taken, or a full-batch gradient). weight_decay is then ignored.
        eval_batches: control batches evaluated along the same line (``{name: batch}`` or a list, named
            ``"control_0"``, ...; a single dict batch of tensors is one control).
        bn: ``"batch"`` (BN batch statistics, as in the training step; running stats untouched) or
            ``"running"`` (eval-mode BN).
        weight_decay: coupled L2 coefficient added to the gradient direction (the SGD update direction).
        lr_guess: start of a cheap adaptive search (e.g. the previous checkpoint's lr*); at most
            ``max_forwards`` forwards plus one backward.
        num_points: budget of lrs (0 excluded) for the default adaptive grid.
        max_forwards: forward budget of the ``lr_guess`` search (the final f(lr*) is among them).
        fit_width: the quadratic is fitted on [0, fit_width * lr*].
        evaluate_at_star: measure f(lr*) with one more forward when lr* was interpolated.
        hvp: also compute d^T H d by an HVP (see :mod:`trajlab.probes.curvature` for the cost).
        hvp_method: ``"double_backward"`` (default, exact; shares its backward with the gradient), ``"jvp"``
            (exact) or ``"finite_difference"`` (biased on ReLU networks, see :mod:`trajlab.probes.curvature`).
        evaluation: ``"loop"`` (one forward per lr) or ``"vmap"`` (``torch.func.vmap`` over stacked
            parameter sets, ``vmap_chunk_size`` at a time); equal results, see the benchmark for speed.
        vmap_chunk_size: parameter sets per vmap call (memory grows linearly with it).

    Returns:
        A :class:`LineProfile`.
    """
    batch = prepare_batch(batch, model, loss_fn)
    controls = _named_controls(eval_batches, model, loss_fn)
    _check_args(lrs, num_points, max_forwards, fit_width, evaluation, lr_guess, vmap_chunk_size)
    meter = CostMeter()
    params = detached_params(model)
    if evaluation == "vmap" and bn == "batch" and any(is_batch_norm(m) for m in model.modules()):
        logger.debug("vmap with train-mode BatchNorm: buffers are stacked per lr")
    with probe_mode(model, bn):
        floss = FunctionalLoss(model, loss_fn, meter, detached_buffers(model))
        f0, g, d, hd = _gradient_and_direction(floss, params, batch, direction, weight_decay, hvp, hvp_method)
        g_dot_d = tree_dot(g, d)
        slope0 = -g_dot_d
        line = _Line(floss, params, d, evaluation, vmap_chunk_size)
        pts: dict[float, float] = {0.0: f0}
        if lrs is not None:
            grid_lrs = sorted({float(x) for x in lrs} - {0.0})
            pts.update(zip(grid_lrs, line.losses(grid_lrs, batch)))
            grid = "fixed"
        elif lr_guess is not None:
            _adaptive_from_guess(line, batch, pts, slope0, float(lr_guess), max_forwards)
            grid = "adaptive_from_guess"
        else:
            _adaptive_grid(line, batch, pts, slope0, num_points)
            grid = "adaptive"
        xs = np.array(sorted(pts))
        lr_star, f_star, bracketed = _local_minimum(xs, np.array([pts[x] for x in xs]))
        budget_left = lr_guess is None or len(pts) - 1 < max_forwards
        near = min(abs(x - lr_star) for x in pts) <= 1e-6 * lr_star
        if evaluate_at_star and not near and budget_left:
            pts[lr_star] = f_star = line.losses([lr_star], batch)[0]
            best = min(pts, key=pts.get)
            if pts[best] < f_star:  # interpolation overshot: keep the best measured point
                lr_star, f_star = best, pts[best]
        xs = sorted(pts)
        control_losses = {name: tuple(line.losses(xs, cb)) for name, cb in controls.items()}
        curv_hvp, lr_star_hvp = math.nan, math.nan
        if hd is not None and tree_norm(d) > 0:
            q = tree_dot(d, hd)
            curv_hvp = q / tree_dot(d, d)
            lr_star_hvp = g_dot_d / q if q > 0 else math.nan
    losses = [pts[x] for x in xs]
    fit = _fit(xs, losses, lr_star, fit_width)
    d_norm = tree_norm(d)
    i_star = xs.index(lr_star) if lr_star in pts else None
    return LineProfile(
        lrs=tuple(xs),
        losses=tuple(losses),
        control_losses=control_losses,
        lr_star=lr_star,
        loss_at_lr_star=f_star,
        loss_at_zero=f0,
        one_step_fraction=f_star / f0 if f0 != 0 else math.nan,
        control_at_lr_star={
            k: (v[i_star] / v[0] if i_star is not None and v[0] != 0 else math.nan)
            for k, v in control_losses.items()
        },
        fit=fit,
        curvature_fit=2 * fit.a / d_norm**2 if d_norm > 0 else math.nan,
        curvature_hvp=curv_hvp,
        lr_star_hvp=lr_star_hvp,
        grad_norm=tree_norm(g),
        direction_norm=d_norm,
        grad_dot_direction=g_dot_d,
        bracketed=bracketed,
        grid=grid,
        direction="gradient" if direction is None else "given",
        bn=bn,
        weight_decay=float(weight_decay) if direction is None else 0.0,
        hvp_method=hvp_method if hvp else "none",
        evaluation=evaluation,
        cost=meter.ledger(),
    )


def _gradient_and_direction(
    floss: FunctionalLoss,
    params: Params,
    batch: Batch,
    direction: Mapping[str, Tensor] | None,
    weight_decay: float,
    hvp: bool,
    hvp_method: HVPMethod,
) -> tuple[float, Params, Params, Params | None]:
    """f(0), g, the direction d (g + wd theta, or the given one) and Hd (None without ``hvp``).

    With the default double-backward HVP the gradient comes out of the HVP's own graph-keeping
    backward, so f(0), g and Hd cost one forward, one backward and one double backward together.
    """
    if direction is not None:
        d_of: Mapping[str, Tensor] | Callable[[Params], Params] = check_direction(direction, params)
    elif weight_decay:
        d_of = lambda g: tree_axpy(weight_decay, params, g)  # noqa: E731
    else:
        d_of = lambda g: g  # noqa: E731
    if hvp:
        res = grad_and_hvp(floss, params, batch, d_of, hvp_method)
        if res.loss is None:  # finite differences along a given direction do not compute g
            f0, g = floss.value_and_grad(params, batch)
        else:
            f0, g = res.loss, res.grad
        return f0, g, res.direction, res.hvp
    f0, g = floss.value_and_grad(params, batch)
    return f0, g, (d_of(g) if callable(d_of) else dict(d_of)), None


def _fit(xs: list[float], losses: list[float], lr_star: float, fit_width: float) -> QuadraticFit:
    mask = fit_window(xs, losses, lr_star, fit_width) if lr_star > 0 else np.ones(len(xs), dtype=bool)
    x_fit = np.asarray(xs)[mask]
    if np.unique(x_fit).size < 3:  # too few points in the window: fit what there is
        x_fit, mask = np.asarray(xs), np.ones(len(xs), dtype=bool)
    if np.unique(x_fit).size < 3:
        return QuadraticFit(math.nan, math.nan, math.nan, math.nan, 0.0, float(max(xs)), len(xs))
    a, b, c, r2 = fit_quadratic(x_fit, np.asarray(losses)[mask])
    return QuadraticFit(a, b, c, r2, float(x_fit.min()), float(x_fit.max()), int(mask.sum()))


def _named_controls(
    eval_batches: Mapping[str, Batch] | Sequence[Batch] | None, model: nn.Module, loss_fn: LossFn
) -> dict[str, Batch]:
    """Control batches by name. A mapping whose values are all batches is ``{name: batch}``; any other
    mapping is one dict batch, named ``"control_0"``."""
    if eval_batches is None:
        return {}
    if isinstance(eval_batches, Mapping) and not _is_named_batches(eval_batches):
        eval_batches = [eval_batches]
    if isinstance(eval_batches, Mapping):
        items = [(str(k), v, f"eval_batches[{k!r}]") for k, v in eval_batches.items()]
    else:
        items = [(f"control_{i}", b, f"eval_batches[{i}]") for i, b in enumerate(eval_batches)]
    return {name: prepare_batch(b, model, loss_fn, what) for name, b, what in items}


def _is_named_batches(mapping: Mapping) -> bool:
    """``{name: batch}`` (values are tuples, lists or dicts) rather than one dict batch of tensors."""
    return len(mapping) > 0 and all(isinstance(v, (tuple, list, Mapping)) for v in mapping.values())


def _check_args(lrs, num_points, max_forwards, fit_width, evaluation, lr_guess, chunk) -> None:
    if lrs is not None:
        bad = [x for x in lrs if not (math.isfinite(x) and x >= 0)]
        if bad or len(lrs) < 2:
            raise ValueError(
                f"lrs must be at least 2 finite non-negative step sizes, got bad values {bad[:3]}"
            )
        if lr_guess is not None:
            raise ValueError("give either lrs (a fixed grid) or lr_guess (an adaptive search), not both")
    if lr_guess is not None and not (math.isfinite(lr_guess) and lr_guess > 0):
        raise ValueError(f"lr_guess must be a positive finite step size, got {lr_guess}")
    if num_points < 3:
        raise ValueError(f"num_points must be >= 3 for a quadratic fit, got {num_points}")
    if max_forwards < 2:
        raise ValueError(f"max_forwards must be >= 2, got {max_forwards}")
    if not fit_width > 1:
        raise ValueError(f"fit_width must be > 1 (the window [0, fit_width * lr*]), got {fit_width}")
    if evaluation not in EVALUATIONS:
        raise ValueError(f"evaluation must be one of {EVALUATIONS}, got {evaluation!r}")
    if chunk < 1:
        raise ValueError(f"vmap_chunk_size must be >= 1, got {chunk}")
