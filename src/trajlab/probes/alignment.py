"""Mini-batch gradients against the exact full-training-set gradient, and the gradient-noise scale.

With G = grad L(theta) the full-data gradient (accumulated over ``full_data``, each batch weighted by its
size) and g_b the mean-loss gradient of batch b of size n_b:

* cosine(g_b, G) and |g_b| / |G|;
* tr(Sigma) ~= mean_b n_b |g_b - G|^2 (per-example gradient covariance; E|g_b - G|^2 = tr(Sigma) / n_b
  for i.i.d. examples, no finite-population correction);
* B_simple = tr(Sigma) / |G|^2 and B_noise = tr(H Sigma) / (G^T H G) (McCandlish et al. 2018), with
  tr(H Sigma) ~= mean_b n_b (g_b - G)^T H (g_b - G) and H the Hessian of the loss over
  ``hessian_data`` (default: all of ``full_data``), every quadratic form an HVP per Hessian batch;
* cosines of consecutive batch gradients (g_b, g_{b+1}) and of their noise parts (g_b - G).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from torch import nn

from trajlab.objective import batch_size
from trajlab.probes._functional import (
    Batch,
    CostLedger,
    CostMeter,
    FunctionalLoss,
    LossFn,
    Params,
    detached_buffers,
    detached_params,
    prepare_batch,
    probe_mode,
    tree_dot,
    tree_norm,
    tree_sub,
)
from trajlab.probes.curvature import DEFAULT_HVP_METHOD, HVPMethod, grad_and_hvp, hvps_with_kept_graph


@dataclass(frozen=True)
class GradientAlignment:
    """Result of :func:`gradient_alignment` (per-batch tuples follow the order of ``batches``)."""

    cosine: tuple[float, ...]
    norm_ratio: tuple[float, ...]
    consecutive_cosine: tuple[float, ...]
    consecutive_noise_cosine: tuple[float, ...]
    full_grad_norm: float
    full_loss: float
    trace_sigma: float
    b_simple: float
    trace_h_sigma: float
    g_h_g: float
    b_noise: float
    n_full: int
    bn: str
    hvp_method: str
    cost: CostLedger

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def _cos(a: Params, b: Params) -> float:
    na, nb = tree_norm(a), tree_norm(b)
    return tree_dot(a, b) / (na * nb) if na > 0 and nb > 0 else math.nan


def _accumulate(acc: Params | None, g: Params, w: float) -> Params:
    return {n: g[n] * w for n in g} if acc is None else {n: acc[n] + g[n] * w for n in g}


def gradient_alignment(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Batch],
    full_data: Iterable[Batch],
    *,
    bn: str = "batch",
    noise_scale_hessian: bool = True,
    hessian_batches: int | None = None,
    hvp_method: HVPMethod = DEFAULT_HVP_METHOD,
) -> GradientAlignment:
    """Cosines and norm ratios of mini-batch gradients to the exact full gradient, and B_simple, B_noise.

    Args:
        model: any module (never mutated).
        loss_fn: the loss hook ``loss_fn(model, batch) -> scalar`` (a mean over the batch), or a
            criterion for ``(x, y)`` batches (see :mod:`trajlab.objective`).
        batches: the mini-batches to compare, in order (consecutive ones are correlated pairwise); any
            batch shape the hook takes, moved to the model's device.
        full_data: an iterable of batches covering the full training set (one pass); each is weighted by
            its size (:func:`trajlab.objective.batch_size`).
        bn: ``"batch"`` (every batch normalised with its own statistics) or ``"running"``.
        noise_scale_hessian: also compute tr(H Sigma), G^T H G and B_noise (len(batches) + 1 quadratic
            forms, each an HVP per Hessian batch).
        hessian_batches: use only the first ``hessian_batches`` batches of ``full_data`` for H (None: all).
        hvp_method: see :mod:`trajlab.probes.curvature`.

    Returns:
        A :class:`GradientAlignment`.
    """
    batches = [prepare_batch(b, model, loss_fn, f"batches[{i}]") for i, b in enumerate(batches)]
    if len(batches) < 2:
        raise ValueError(f"gradient_alignment needs at least 2 mini-batches, got {len(batches)}")
    meter = CostMeter()
    params = detached_params(model)
    with probe_mode(model, bn):
        floss = FunctionalLoss(model, loss_fn, meter, detached_buffers(model))
        full: Params | None = None
        full_loss, n_full, hess_data = 0.0, 0, []
        for i, fb in enumerate(full_data):
            fb = prepare_batch(fb, model, loss_fn, f"full_data[{i}]")
            loss, g = floss.value_and_grad(params, fb)
            n = batch_size(fb)
            full, full_loss, n_full = _accumulate(full, g, n), full_loss + loss * n, n_full + n
            if noise_scale_hessian and (hessian_batches is None or i < hessian_batches):
                hess_data.append((fb, n))
        if full is None:
            raise ValueError("full_data yielded no batches")
        full = {k: v / n_full for k, v in full.items()}  # G = sum_b n_b g_b / N
        grads = [floss.value_and_grad(params, b)[1] for b in batches]
        sizes = [batch_size(b) for b in batches]
        noise = [tree_sub(g, full) for g in grads]
        trace_sigma = sum(n * tree_dot(e, e) for n, e in zip(sizes, noise)) / len(noise)
        g_norm2 = tree_dot(full, full)
        t_h_sigma = g_h_g = b_noise = math.nan
        if noise_scale_hessian:
            quad = _quadratic_forms(floss, params, hess_data, [full, *noise], hvp_method)
            g_h_g = quad[0]
            t_h_sigma = sum(n * q for n, q in zip(sizes, quad[1:])) / len(noise)
            b_noise = t_h_sigma / g_h_g if g_h_g != 0 else math.nan
    return GradientAlignment(
        cosine=tuple(_cos(g, full) for g in grads),
        norm_ratio=tuple(tree_norm(g) / g_norm2**0.5 if g_norm2 > 0 else math.nan for g in grads),
        consecutive_cosine=tuple(_cos(a, b) for a, b in zip(grads, grads[1:])),
        consecutive_noise_cosine=tuple(_cos(a, b) for a, b in zip(noise, noise[1:])),
        full_grad_norm=g_norm2**0.5,
        full_loss=full_loss / n_full,
        trace_sigma=trace_sigma,
        b_simple=trace_sigma / g_norm2 if g_norm2 > 0 else math.nan,
        trace_h_sigma=t_h_sigma,
        g_h_g=g_h_g,
        b_noise=b_noise,
        n_full=n_full,
        bn=bn,
        hvp_method=hvp_method if noise_scale_hessian else "none",
        cost=meter.ledger(),
    )


def _quadratic_forms(
    floss: FunctionalLoss, params: Params, data: list[tuple[Batch, int]], vs: list[Params], method: HVPMethod
) -> list[float]:
    """v^T H v for each v, H = sum_b n_b H_b / sum_b n_b over ``data`` (one HVP per (v, batch)).

    With the double-backward method each batch's gradient graph is built once for all the v.
    """
    total = sum(n for _, n in data)
    q = [0.0] * len(vs)
    for b, n in data:
        if method == "double_backward":
            hvs = hvps_with_kept_graph(floss, params, b, vs)
        else:
            hvs = [grad_and_hvp(floss, params, b, v, method).hvp for v in vs]
        for i, (v, hv) in enumerate(zip(vs, hvs)):
            q[i] += n * tree_dot(v, hv)
    return [x / total for x in q]
