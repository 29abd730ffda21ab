"""Convolution and BatchNorm with cheap double backwards, for exact reverse-over-reverse HVPs.

A double-backward HVP (g with ``create_graph=True``, then Hv = d(g . v)/dtheta) differentiates each
layer's *backward*. Autograd's generic formulas for that are slow on CPU: train-mode BatchNorm's
``batchnorm_double_backward`` issues ~110 tensor ops per layer, and convolution's double backward
computes the weight gradient as a convolution over transposed batch/channel axes. Measured on ResNet-20
(batch 128, one thread) they took ~1/3 and ~1/4 of an HVP. Here each layer is a custom autograd
``Function`` whose backward is another ``Function`` with a hand-derived backward:

* convolution y = conv(x, W) + b, backward (g_y) -> (g_x, g_W, g_b). Its backward, given cotangents
  (a, A, beta) of (g_x, g_W, g_b): d g_y = conv(a, W) + conv(x, A) + beta, d W = weight-grad(input a,
  grad g_y), d x = input-grad(weight A, grad g_y): two convolutions and two ``convolution_backward`` calls.
* train-mode BatchNorm per channel over its N values: x^ = (x - mu) s, s = (var + eps)^-1/2,
  y = w x^ + b, backward g_x = w s (g_y - m(g_y) - x^ m(g_y x^)) with m the channel mean. Its backward:
  d g_y = w s a + (alpha - w s m(a x^)) x^ + beta - w s m(a),
  d w = s N k with k = m(a g_y) - m(a) m(g_y) - m(a x^) m(g_y x^),
  d x = P x^ + Q a + R g_y + T per channel, R = s (alpha - w s m(a x^)), Q = -w s^2 m(g_y x^),
  P = -w s^2 k + w s^2 m(g_y x^) m(a x^) - R m(g_y x^), T = w s^2 m(g_y x^) m(a) - R m(g_y)
  (s depends on x: ds/dx_i = -s^2 x^_i / N).
* eval-mode BatchNorm is the affine map x * (w s_run) + (b - mu_run w s_run) in plain ops.

:class:`SecondOrderKernels` is a :class:`torch.overrides.TorchFunctionMode` that routes
``F.conv1d/2d/3d`` and ``F.batch_norm`` to these while it is active, so no model is modified. Calls it
does not cover (string padding, unbatched or mixed-dtype inputs) fall through to PyTorch. The results
equal autograd's to rounding (``tests/probes/test_second_order.py`` compares in float64); third
derivatives are not supported (``once_differentiable``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import Function, once_differentiable
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode


def _channel_view(x: Tensor) -> tuple[list[int], list[int]]:
    """(broadcast shape [1, C, 1, ...], reduced dims [0, 2, 3, ...]) of a channels-second tensor."""
    return [1, -1] + [1] * (x.dim() - 2), [0, *range(2, x.dim())]


# ------------------------------------------------------------------------------------------ convolution


class _ConvBackward(Function):
    """(g_y, x, W) -> (g_x, g_W, g_b) of y = conv(x, W) + b; its backward is the conv double backward."""

    @staticmethod
    def forward(ctx, gy, x, w, conf, mask):  # type: ignore[override]
        stride, padding, dilation, groups = conf
        bias_sizes = [w.shape[0]] if mask[2] else None
        zeros = [0] * len(stride)
        grads = torch.ops.aten.convolution_backward(
            gy, x, w, bias_sizes, stride, padding, dilation, False, zeros, groups, list(mask)
        )
        ctx.save_for_backward(gy, x, w)
        ctx.conf = conf
        return grads

    @staticmethod
    @once_differentiable
    def backward(ctx, a, big_a, beta):  # type: ignore[override]
        gy, x, w = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        zeros = [0] * len(stride)
        d_gy = d_x = d_w = None
        if a is not None:
            d_gy = torch.convolution(a, w, None, stride, padding, dilation, False, zeros, groups)
        if big_a is not None:
            t = torch.convolution(x, big_a, None, stride, padding, dilation, False, zeros, groups)
            d_gy = t if d_gy is None else d_gy.add_(t)  # d_gy is a fresh tensor: add in place
        if beta is not None:
            shape, _ = _channel_view(gy)
            d_gy = beta.view(shape).expand_as(gy).clone() if d_gy is None else d_gy.add_(beta.view(shape))
        common = (stride, padding, dilation, False, zeros, groups)
        if a is not None and ctx.needs_input_grad[2]:
            d_w = torch.ops.aten.convolution_backward(gy, a, w, None, *common, [False, True, False])[1]
        if big_a is not None and ctx.needs_input_grad[1]:
            d_x = torch.ops.aten.convolution_backward(gy, x, big_a, None, *common, [True, False, False])[0]
        return d_gy, d_x, d_w, None, None


class _Conv(Function):
    @staticmethod
    def forward(ctx, x, w, b, conf):  # type: ignore[override]
        stride, padding, dilation, groups = conf
        ctx.save_for_backward(x, w)
        ctx.conf, ctx.has_bias = conf, b is not None
        return torch.convolution(x, w, b, stride, padding, dilation, False, [0] * len(stride), groups)

    @staticmethod
    def backward(ctx, gy):  # type: ignore[override]
        x, w = ctx.saved_tensors
        mask = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2])
        gx, gw, gb = _ConvBackward.apply(gy, x, w, ctx.conf, mask)
        return gx, gw, gb, None


def _ints(value: Any, n: int) -> list[int]:
    return [int(value)] * n if isinstance(value, int) else [int(v) for v in value]


def _conv(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> Tensor | None:  # noqa: A002
    """``F.convNd`` through :class:`_Conv`, or None when the call is not covered (then PyTorch runs it)."""
    same_dtype = weight.dtype == input.dtype and (bias is None or bias.dtype == input.dtype)
    if isinstance(padding, str) or input.dim() != weight.dim() or not same_dtype:
        return None
    n = input.dim() - 2
    conf = (_ints(stride, n), _ints(padding, n), _ints(dilation, n), int(groups))
    return _Conv.apply(input, weight, bias, conf)


# ------------------------------------------------------------------------------------------ batch norm


class _BatchNormBackward(Function):
    """(g_y, x, w) -> (g_x, g_w, g_b) of train-mode BN; its backward is BN's double backward (see top)."""

    @staticmethod
    def forward(ctx, gy, x, w, mean, rstd):  # type: ignore[override]
        _, dims = _channel_view(x)
        gx, gw, _ = torch.ops.aten.native_batch_norm_backward(
            gy, x, w, None, None, mean, rstd, True, 0.0, [True, w is not None, False]
        )
        gb = gy.sum(dims)
        ctx.save_for_backward(gy, x, w, mean, rstd, gb, gw)
        return gx, gw, gb

    @staticmethod
    @once_differentiable
    def backward(ctx, a, alpha, beta):  # type: ignore[override]
        gy, x, w, mean, rstd, s1, s2 = ctx.saved_tensors
        shape, dims = _channel_view(x)
        n = x.numel() // x.shape[1]
        view = lambda t: t.view(shape)  # noqa: E731 - per-channel [C] -> [1, C, 1, ...]
        xh = torch.addcmul(view(-mean * rstd), x, view(rstd))  # x^ = (x - mu) s in one pass
        s2 = (gy * xh).sum(dims) if s2 is None else s2  # sum g_y x^ (= g_w when affine)
        ws = rstd if w is None else w * rstd
        a = torch.zeros_like(x) if a is None else a
        alpha = torch.zeros_like(rstd) if alpha is None else alpha
        beta = torch.zeros_like(rstd) if beta is None else beta
        m_gy, m_gyx = s1 / n, s2 / n
        m_a, m_ax, m_agy = a.sum(dims) / n, (a * xh).sum(dims) / n, (a * gy).sum(dims) / n
        k = m_agy - m_a * m_gy - m_ax * m_gyx
        # Fused multiply-adds: two passes for d g_y, three for d x (per-channel coefficients are [C]).
        d_gy = torch.addcmul(view(beta - ws * m_a), xh, view(alpha - ws * m_ax)).addcmul_(a, view(ws))
        r = rstd * (alpha - ws * m_ax)
        q = -ws * rstd * m_gyx
        p = -ws * rstd * k + ws * rstd * m_gyx * m_ax - r * m_gyx
        t = ws * rstd * m_gyx * m_a - r * m_gy
        d_x = torch.addcmul(view(t), xh, view(p)).addcmul_(a, view(q)).addcmul_(gy, view(r))
        d_w = None if w is None else rstd * n * k
        return d_gy, d_x, d_w, None, None


class _BatchNormTrain(Function):
    @staticmethod
    def forward(ctx, x, w, b, eps):  # type: ignore[override]
        y, mean, rstd = torch.native_batch_norm(x, w, b, None, None, True, 0.0, eps)
        ctx.save_for_backward(x, w, mean, rstd)
        ctx.mark_non_differentiable(mean, rstd)
        ctx.has_bias = b is not None
        return y, mean, rstd

    @staticmethod
    def backward(ctx, gy, _gmean, _grstd):  # type: ignore[override]
        x, w, mean, rstd = ctx.saved_tensors
        gx, gw, gb = _BatchNormBackward.apply(gy, x, w, mean, rstd)
        return gx, gw, (gb if ctx.has_bias else None), None


def _batch_norm(
    input,  # noqa: A002
    running_mean,
    running_var,
    weight=None,
    bias=None,
    training=False,
    momentum=0.1,
    eps=1e-5,
) -> Tensor | None:
    """``F.batch_norm`` with cheap double backwards, or None when the call is not covered."""
    dtypes = {t.dtype for t in (input, weight, bias) if t is not None}
    if input.dim() < 2 or len(dtypes) != 1 or not input.is_floating_point():
        return None
    shape, _ = _channel_view(input)
    if training or running_mean is None:
        if input.numel() // input.shape[1] <= 1:  # the same check as F.batch_norm
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {input.size()}"
            )
        y, mean, rstd = _BatchNormTrain.apply(input, weight, bias, eps)
        if running_mean is not None and training:
            _update_running_stats(running_mean, running_var, mean, rstd, eps, momentum, input)
        return y
    scale = torch.rsqrt(running_var + eps)
    scale = scale if weight is None else scale * weight
    shift = -running_mean * scale if bias is None else bias - running_mean * scale
    return input * scale.view(shape) + shift.view(shape)


@torch.no_grad()
def _update_running_stats(running_mean, running_var, mean, rstd, eps, momentum, x) -> None:
    """What ``F.batch_norm`` does in train mode: EMA of the mean and of the unbiased variance."""
    n = x.numel() // x.shape[1]
    var = (rstd.detach().double() ** -2 - eps).to(running_var.dtype)
    running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
    running_var.mul_(1 - momentum).add_(var * (n / max(n - 1, 1)), alpha=momentum)


_KERNELS = {
    F.conv1d: _conv,
    F.conv2d: _conv,
    F.conv3d: _conv,
    F.batch_norm: _batch_norm,
}


class SecondOrderKernels(TorchFunctionMode):
    """While active, ``F.conv*d`` and ``F.batch_norm`` use the cheap-double-backward kernels above."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kernel = _KERNELS.get(func)
        if kernel is not None:
            out = kernel(*args, **kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)
