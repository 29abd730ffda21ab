"""Curvature along a direction by Hessian-vector products: c(v) = v^T H v / |v|^2.

Three HVP methods (tested equal to each other on smooth models):

* ``"double_backward"`` (the default): reverse-over-reverse, exact. g = dL/dtheta with
  ``create_graph=True``, then Hv = d(g . v)/dtheta. The graph-keeping backward also returns g, so a
  direction built from the gradient (v = g, or d = g + wd theta) costs one forward, one graph-keeping
  backward and one double backward for loss, gradient and Hv together. Convolution and BatchNorm use
  hand-derived double backwards (:mod:`trajlab.probes._second_order`): on ResNet-20 (batch 128, one
  thread) g and Hg together cost 3.47 forward+backwards, 4.65 with autograd's own (BENCHMARKS.md).
* ``"jvp"``: forward-over-reverse, ``torch.func.jvp(torch.func.grad(L), (theta,), (v,))``, exact but slower
  on CPU (5.2 forward+backwards). Forward-mode AD is missing for some kernels (e.g. fused attention).
* ``"finite_difference"``: central differences of gradients, Hv ~= (g(theta + eps v) - g(theta - eps v))
  / (2 eps), with eps |v| = ``fd_rel_step`` * max(|theta|, 1). Two plain backwards (2.05
  forward+backwards given g), works wherever a gradient does, but it is *not* exact on piecewise-linear
  networks: when the pre-activation of a ReLU unit crosses zero inside [-eps, eps], the jump in its
  slope adds jump / (2 eps) to the estimate. On ReLU networks in float32 (eps = 1e-4 |theta|) g^T H g
  was off by more than 2% in 7 of 30 seeds (worst +45%), on the small ReLU CNN of
  ``tests/probes/test_curvature_accuracy.py`` in 24 of 30; that test checks the default never is.

Autograd's Hessian of a ReLU network is the almost-everywhere Hessian (ReLU'' = 0): the curvature of the
smooth piece theta lies in. The line profile's fitted curvature, measured over a finite range of lrs,
includes the kinks on the way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from trajlab.probes._functional import (
    Batch,
    CostLedger,
    CostMeter,
    Direction,
    FunctionalLoss,
    LossFn,
    Params,
    check_direction,
    detached_buffers,
    detached_params,
    prepare_batch,
    probe_mode,
    tree_axpy,
    tree_dot,
    tree_norm,
)
from trajlab.probes._second_order import SecondOrderKernels

HVPMethod = Literal["double_backward", "jvp", "finite_difference"]
HVP_METHODS = ("double_backward", "jvp", "finite_difference")
# Exact by default; finite differences are biased on ReLU networks (module docstring). Cost measured by
# benchmarks/bench_probes.py (BENCHMARKS.md).
DEFAULT_HVP_METHOD: HVPMethod = "double_backward"
# A direction: given tensors, None for the gradient itself, or a function of the gradient (d = g + wd theta).
DirectionSpec = Mapping[str, Tensor] | Callable[[Params], Mapping[str, Tensor]] | None


class SecondOrder(NamedTuple):
    """What :func:`grad_and_hvp` returns: loss (None if not computed), g (None if not needed), v, Hv."""

    loss: float | None
    grad: Params | None
    direction: Direction
    hvp: Params


def check_method(method: str) -> None:
    if method not in HVP_METHODS:
        raise ValueError(f"hvp method must be one of {HVP_METHODS}, got {method!r}")


def fd_step(params: Mapping[str, Tensor], v: Mapping[str, Tensor], rel_step: float | None = None) -> float:
    """Finite-difference step eps with eps |v| = rel_step * max(|theta|, 1).

    rel_step defaults to 1e-4 in float32 and 1e-6 in float64 (1e-2 otherwise). Measured on ResNet-20
    (|theta| ~ 44, float32): g^T H g / |g|^2 is stable to 0.1% for rel_step in [1e-4, 3e-4] at
    initialisation; at 5e-3 (the textbook cube root of machine epsilon) truncation error costs 7%, below
    3e-5 rounding noise and single ReLU kink crossings make it jitter by ~1%.
    """
    dtype = next(iter(params.values())).dtype
    if rel_step is None:
        rel_step = {torch.float32: 1e-4, torch.float64: 1e-6}.get(dtype, 1e-2)
    v_norm = tree_norm(v)
    if v_norm == 0:
        raise ValueError("cannot take a finite-difference HVP along a zero vector")
    return rel_step * max(tree_norm(params), 1.0) / v_norm


def _resolve(v: DirectionSpec, grad: Params) -> Direction:
    if v is None:
        return grad
    return dict(v(grad)) if callable(v) else dict(v)


def grad_and_hvp(
    floss: FunctionalLoss,
    params: Params,
    batch: Batch,
    v: DirectionSpec,
    method: HVPMethod,
    grad: Params | None = None,
    fd_rel_step: float | None = None,
    kernels: bool = True,
) -> SecondOrder:
    """Loss, gradient g, direction v and Hv at ``params``.

    Args:
        floss: the functional loss (call inside :func:`probe_mode`).
        params: where to differentiate.
        batch: the batch of the loss.
        v: the direction; None means v = g, a callable maps g to v (evaluated once g is known, so
            ``double_backward`` shares its first backward with the gradient).
        method: one of :data:`HVP_METHODS`.
        grad: g when already known (``jvp`` and ``finite_difference`` then skip computing it).
        fd_rel_step: see :func:`fd_step`.
        kernels: use the cheap double backwards of :mod:`trajlab.probes._second_order` (benchmarks
            compare against False).

    Returns:
        A :class:`SecondOrder`; its grad is None only for ``finite_difference`` along a given ``v``
        without ``grad`` (g(theta) itself is then never needed).
    """
    check_method(method)
    if method == "double_backward":
        return _double_backward(floss, params, batch, v, kernels)
    loss_value = None
    if grad is None and (v is None or callable(v) or method == "jvp"):
        loss_value, grad = floss.value_and_grad(params, batch)
    vec = _resolve(v, grad) if grad is not None else dict(v)
    floss.meter.hvps += 1
    if method == "jvp":
        floss.meter.backwards += 1  # one forward-over-reverse pass; its primal output is the gradient
        primals = {n: p.detach() for n, p in params.items()}
        grad_fn = torch.func.grad(lambda p: floss(p, batch))
        _, hv = torch.func.jvp(grad_fn, (primals,), ({n: vec[n] for n in primals},))
        return SecondOrder(loss_value, grad, vec, {n: t.detach() for n, t in hv.items()})
    # Central differences need g(theta +- eps v) only.
    if tree_norm(vec) == 0:
        return SecondOrder(loss_value, grad, vec, {n: torch.zeros_like(p) for n, p in params.items()})
    eps = fd_step(params, vec, fd_rel_step)
    _, g_plus = floss.value_and_grad(tree_axpy(eps, vec, params), batch)
    _, g_minus = floss.value_and_grad(tree_axpy(-eps, vec, params), batch)
    return SecondOrder(loss_value, grad, vec, {n: (g_plus[n] - g_minus[n]) / (2 * eps) for n in params})


def _double_backward(
    floss: FunctionalLoss, params: Params, batch: Batch, v: DirectionSpec, kernels: bool
) -> SecondOrder:
    """Forward, graph-keeping backward (-> g), then Hv = d(g . sg(v))/dtheta: g comes for free."""
    floss.meter.backwards += 1
    floss.meter.hvps += 1
    leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    mode = SecondOrderKernels() if kernels else contextlib.nullcontext()
    with torch.enable_grad(), mode:
        loss = floss(leaves, batch)
        g = torch.autograd.grad(loss, list(leaves.values()), create_graph=True, allow_unused=True)
        g = [torch.zeros_like(p) if t is None else t for t, p in zip(g, leaves.values())]
        grad = {n: t.detach() for n, t in zip(leaves, g)}
        vec = _resolve(v, grad)
        # Along v = g the direction is held constant: Hg = d(g . sg(g))/dtheta, not d(|g|^2/2)/dtheta twice.
        terms = [(t * vec[n].detach()).sum() for n, t in zip(leaves, g) if t.requires_grad]
        hv = _grad_or_zeros(sum(terms) if terms else None, leaves)
    return SecondOrder(float(loss.detach()), grad, vec, hv)


def hvps_with_kept_graph(
    floss: FunctionalLoss, params: Params, batch: Batch, vs: list[Mapping[str, Tensor]]
) -> list[Params]:
    """H v for several v at one batch: the graph of g is built once and each Hv is one double backward."""
    floss.meter.backwards += 1
    floss.meter.hvps += len(vs)
    names = list(params)
    leaves = [params[n].detach().requires_grad_(True) for n in names]
    with torch.enable_grad(), SecondOrderKernels():
        loss = floss(dict(zip(names, leaves)), batch)
        grads = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
    live = [(g, n) for g, n in zip(grads, names) if g is not None and g.requires_grad]
    out = []
    for v in vs:
        if not live:
            out.append({n: torch.zeros_like(p) for n, p in params.items()})
            continue
        hv = torch.autograd.grad(
            [g for g, _ in live], leaves, [v[n] for _, n in live], retain_graph=True, allow_unused=True,
            materialize_grads=True,
        )  # fmt: skip
        out.append(dict(zip(names, hv)))
    return out


def _grad_or_zeros(scalar: Tensor | None, leaves: Mapping[str, Tensor]) -> Params:
    if scalar is None:  # the gradient does not depend on theta: H = 0
        return {n: torch.zeros_like(p) for n, p in leaves.items()}
    hv = torch.autograd.grad(scalar, list(leaves.values()), allow_unused=True, materialize_grads=True)
    return dict(zip(leaves, hv))


@dataclass(frozen=True)
class Curvature:
    """Result of :func:`curvature_along`.

    Attributes:
        curvature: v^T H v / |v|^2, the second derivative of the loss along the unit vector v / |v|.
        quadratic_form: v^T H v.
        direction_norm: |v|.
        grad_dot_direction: g^T v (with v = g: |g|^2).
        lr_star_quadratic: g^T v / v^T H v, the minimiser of the second-order model along theta - lr v
            (with v = g: |g|^2 / g^T H g, McCandlish et al.'s eps_max); nan if v^T H v <= 0.
        loss: loss at theta (nan if not computed).
        method: HVP method used.
        bn: BatchNorm mode.
        cost: cost ledger.
    """

    curvature: float
    quadratic_form: float
    direction_norm: float
    grad_dot_direction: float
    lr_star_quadratic: float
    loss: float
    method: str
    bn: str
    cost: CostLedger

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["cost"] = self.cost.to_dict()
        return d


def hessian_vector_product(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Batch,
    vector: Mapping[str, Tensor],
    *,
    bn: str = "batch",
    method: HVPMethod = DEFAULT_HVP_METHOD,
) -> Params:
    """H v for the loss of ``batch`` at the model's parameters (model untouched).

    Args:
        model: any module; its parameters define theta.
        loss_fn: the loss hook ``loss_fn(model, batch) -> scalar`` (or a criterion, see
            :mod:`trajlab.objective`).
        batch: a tensor, tuple/list or dict batch (moved to the model's device).
        vector: ``{name: tensor}`` with the shapes of ``model.named_parameters()``.
        bn: ``"batch"`` (train-mode BN statistics) or ``"running"`` (eval-mode BN).
        method: one of :data:`HVP_METHODS` (default: exact double backward).

    Returns:
        ``{name: (H v)[name]}``.
    """
    batch = prepare_batch(batch, model, loss_fn)
    check_method(method)
    params = detached_params(model)
    v = check_direction(vector, params)
    with probe_mode(model, bn):
        floss = FunctionalLoss(model, loss_fn, CostMeter(), detached_buffers(model))
        return grad_and_hvp(floss, params, batch, v, method).hvp


def curvature_along(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Batch,
    direction: Mapping[str, Tensor] | None = None,
    *,
    bn: str = "batch",
    method: HVPMethod = DEFAULT_HVP_METHOD,
) -> Curvature:
    """Curvature of the batch loss along ``direction`` (default: the batch's own gradient g).

    c = v^T H v / |v|^2; along g it is g^T H g / |g|^2 and lr* = |g|^2 / g^T H g is the best step of
    the local quadratic model.

    Args:
        model: any module (never mutated).
        loss_fn: the loss hook ``loss_fn(model, batch) -> scalar`` (or a criterion, see
            :mod:`trajlab.objective`).
        batch: a tensor, tuple/list or dict batch (moved to the model's device).
        direction: ``{name: tensor}`` or None for the batch gradient.
        bn: ``"batch"`` or ``"running"`` BatchNorm statistics.
        method: one of :data:`HVP_METHODS`; the default (exact double backward) computes loss, g and Hv
            in one pass.

    Returns:
        A :class:`Curvature`.
    """
    batch = prepare_batch(batch, model, loss_fn)
    check_method(method)
    params = detached_params(model)
    v = None if direction is None else check_direction(direction, params)
    meter = CostMeter()
    loss, g = None, None
    with probe_mode(model, bn):
        floss = FunctionalLoss(model, loss_fn, meter, detached_buffers(model))
        if method != "double_backward":  # g is needed for g . v; double backward returns it anyway
            loss, g = floss.value_and_grad(params, batch)
        res = grad_and_hvp(floss, params, batch, v, method, grad=g)
    loss = res.loss if res.loss is not None else loss
    return _curvature_result(res.grad, res.direction, res.hvp, loss, method, bn, meter.ledger())


def _curvature_result(g, v, hv, loss, method, bn, cost: CostLedger) -> Curvature:
    q = tree_dot(v, hv)
    v_norm = tree_norm(v)
    gv = tree_dot(g, v)
    return Curvature(
        curvature=q / v_norm**2 if v_norm > 0 else float("nan"),
        quadratic_form=q,
        direction_norm=v_norm,
        grad_dot_direction=gv,
        lr_star_quadratic=gv / q if q > 0 else float("nan"),
        loss=float("nan") if loss is None else loss,
        method=method,
        bn=bn,
        cost=cost,
    )
