"""Curvature along a direction by Hessian-vector products: c(v) = v^T H v / |v|^2.

Three interchangeable HVP methods (tested equal to each other and to a finite-difference reference):

* ``"double_backward"``: reverse-over-reverse. g = dL/dtheta with ``create_graph=True``, then
  Hv = d(g . v)/dtheta. When v is the batch's own gradient the first backward is shared, so gradient
  and Hg come from one forward, one graph-keeping backward and one double backward.
* ``"jvp"``: forward-over-reverse, ``torch.func.jvp(torch.func.grad(L), (theta,), (v,))``. Forward-mode
  AD is missing for some kernels (e.g. fused attention); use another method there.
* ``"finite_difference"``: central differences of gradients, Hv ~= (g(theta + eps v) - g(theta - eps v)) /
  (2 eps), with eps |v| = ``fd_rel_step`` * max(|theta|, 1) (error O(eps^2) from third derivatives).
  Two plain backwards, works wherever a gradient does.

ReLU networks: autograd HVPs return the almost-everywhere Hessian (ReLU'' = 0), while finite
differences over a step eps also see the units whose pre-activation crosses zero. On ResNet-20 at
initialisation the two differ by ~2% (g^T H g / |g|^2 = 15.03 vs 15.35); with smooth activations they
agree to float precision. The line profile's fitted curvature, measured over a finite range, includes
the kinks too.

The default (:data:`DEFAULT_HVP_METHOD`) was chosen by ``benchmarks/bench_probes.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Literal

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
    check_batch,
    check_direction,
    detached_buffers,
    detached_params,
    probe_mode,
    tree_axpy,
    tree_dot,
    tree_norm,
)

HVPMethod = Literal["double_backward", "jvp", "finite_difference"]
HVP_METHODS = ("double_backward", "jvp", "finite_difference")
# Measured on ResNet-20 / batch 128 / CPU (benchmarks/results/probes.json), HVP time / (forward+backward):
# finite_difference ~1.5-2x (given g), jvp ~4x, double_backward ~4.8x (gradient included).
DEFAULT_HVP_METHOD: HVPMethod = "finite_difference"


def _check_method(method: str) -> None:
    if method not in HVP_METHODS:
        raise ValueError(f"hvp method must be one of {HVP_METHODS}, got {method!r}")


def fd_step(params: Mapping[str, Tensor], v: Mapping[str, Tensor], rel_step: float | None = None) -> float:
    """Finite-difference step eps with eps |v| = rel_step * max(|theta|, 1).

    rel_step defaults to 1e-4 in float32 and 1e-6 in float64 (1e-2 otherwise). Measured on ResNet-20
    (|theta| ~ 44, float32): g^T H g / |g|^2 is stable to 0.1% for rel_step in [1e-4, 3e-4]; at 5e-3 (the
    textbook cube root of machine epsilon) truncation error costs 7%, below 3e-5 rounding noise and
    single ReLU kink crossings make it jitter by ~1%.
    """
    dtype = next(iter(params.values())).dtype
    if rel_step is None:
        rel_step = {torch.float32: 1e-4, torch.float64: 1e-6}.get(dtype, 1e-2)
    v_norm = tree_norm(v)
    if v_norm == 0:
        raise ValueError("cannot take a finite-difference HVP along a zero vector")
    return rel_step * max(tree_norm(params), 1.0) / v_norm


def grad_and_hvp(
    floss: FunctionalLoss,
    params: Params,
    batch: Batch,
    v: Direction | None,
    method: HVPMethod,
    grad: Params | None = None,
    fd_rel_step: float | None = None,
) -> tuple[float | None, Params | None, Params]:
    """Loss, gradient g and Hv at ``params``; ``v=None`` means v = g (the curvature along the gradient).

    Pass ``grad`` when g is already known (it is reused and not recomputed, except by
    ``double_backward`` along g, where the graph-keeping backward recomputes it at no extra pass).

    Returns:
        ``(loss or None, g or None, Hv)``; loss is None when no plain forward was needed, g is None only
        for ``finite_difference`` along a given ``v`` without ``grad`` (g(theta) itself is never needed).
    """
    _check_method(method)
    meter = floss.meter
    loss_value: float | None = None
    if method == "double_backward":
        meter.backwards += 1
        meter.hvps += 1
        leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
        with torch.enable_grad():
            loss = floss(leaves, batch)
            g = torch.autograd.grad(loss, list(leaves.values()), create_graph=True)
            # v = g.detach() along the gradient: H g is d(g . sg(g))/dtheta, not d(|g|^2/2)/dtheta twice.
            vs = [t.detach() for t in g] if v is None else [v[n] for n in leaves]
            gv = sum((gi * vi).sum() for gi, vi in zip(g, vs))
            hv = torch.autograd.grad(gv, list(leaves.values()))
        loss_value = float(loss.detach())
        return loss_value, {n: t.detach() for n, t in zip(leaves, g)}, dict(zip(leaves, hv))
    if grad is None and v is None:
        loss_value, grad = floss.value_and_grad(params, batch)
    v = grad if v is None else v
    meter.hvps += 1
    if method == "jvp":
        meter.backwards += 1  # one forward-over-reverse pass; its primal output is the gradient
        primals = {n: p.detach() for n, p in params.items()}
        grad_fn = torch.func.grad(lambda p: floss(p, batch))
        g_out, hv = torch.func.jvp(grad_fn, (primals,), ({n: v[n] for n in primals},))
        grad = grad if grad is not None else {n: t.detach() for n, t in g_out.items()}
        return loss_value, grad, {n: t.detach() for n, t in hv.items()}
    # Central differences need g(theta +- eps v) only; g(theta) is returned when known, else None.
    eps = fd_step(params, v, fd_rel_step)
    _, g_plus = floss.value_and_grad(tree_axpy(eps, v, params), batch)
    _, g_minus = floss.value_and_grad(tree_axpy(-eps, v, params), batch)
    return loss_value, grad, {n: (g_plus[n] - g_minus[n]) / (2 * eps) for n in params}


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
        loss_fn: ``loss_fn(outputs, targets) -> scalar``.
        batch: ``(inputs, targets)``.
        vector: ``{name: tensor}`` with the shapes of ``model.named_parameters()``.
        bn: ``"batch"`` (train-mode BN statistics) or ``"running"`` (eval-mode BN).
        method: one of :data:`HVP_METHODS`.

    Returns:
        ``{name: (H v)[name]}``.
    """
    batch = check_batch(batch)
    params = detached_params(model)
    v = check_direction(vector, params)
    with probe_mode(model, bn):
        floss = FunctionalLoss(model, loss_fn, CostMeter(), detached_buffers(model))
        return grad_and_hvp(floss, params, batch, v, method)[2]


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
        loss_fn: ``loss_fn(outputs, targets) -> scalar``.
        batch: ``(inputs, targets)``.
        direction: ``{name: tensor}`` or None for the batch gradient.
        bn: ``"batch"`` or ``"running"`` BatchNorm statistics.
        method: one of :data:`HVP_METHODS`.

    Returns:
        A :class:`Curvature`.
    """
    batch = check_batch(batch)
    params = detached_params(model)
    v = None if direction is None else check_direction(direction, params)
    meter = CostMeter()
    with probe_mode(model, bn):
        floss = FunctionalLoss(model, loss_fn, meter, detached_buffers(model))
        loss, g = (None, None) if method == "double_backward" else floss.value_and_grad(params, batch)
        loss_hvp, g, hv = grad_and_hvp(floss, params, batch, v, method, grad=g)
    loss = loss if loss is not None else loss_hvp
    v = g if v is None else v
    return _curvature_result(g, v, hv, loss, method, bn, meter.ledger())


def _curvature_result(g, v, hv, loss, method, bn, cost) -> Curvature:
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
