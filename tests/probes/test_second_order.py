"""The cheap double backwards of trajlab.probes._second_order against autograd's own, in float64."""

import contextlib

import pytest
import torch
from torch import nn

from trajlab.probes._second_order import SecondOrderKernels


class Mixed(nn.Module):
    """Strided, dilated, grouped, reflect-padded and bias-free convs; BN 1d/2d on 2-d and 3-d inputs."""

    def __init__(self, affine: bool = True, track: bool = True) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.b1 = nn.BatchNorm2d(4, affine=affine, track_running_stats=track)
        self.c2 = nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=2, bias=False, padding_mode="reflect")
        self.c3 = nn.Conv1d(4, 3, 2)
        self.b3 = nn.BatchNorm1d(3)
        self.fc = nn.Linear(3, 5)
        self.b4 = nn.BatchNorm1d(5)
        self.same = nn.Conv2d(4, 4, 3, padding="same")  # string padding: falls through to PyTorch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.b1(self.c1(x)))
        h = torch.tanh(self.c2(h)) + self.same(h)
        h = self.b3(self.c3(h.mean(3)))
        return self.b4(self.fc(torch.tanh(h).mean(2)))


def _grad_hvp_state(model, x, v, kernels):
    state = {k: t.clone() for k, t in model.state_dict().items()}
    params = list(model.parameters())
    with SecondOrderKernels() if kernels else contextlib.nullcontext():
        loss = (model(x).sin() ** 2).sum()
        g = torch.autograd.grad(loss, params, create_graph=True)
        hv = torch.autograd.grad(sum((a * b).sum() for a, b in zip(g, v)), params)
    after = {k: t.clone() for k, t in model.state_dict().items()}
    model.load_state_dict(state)
    return g, hv, after


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize(("affine", "track"), [(True, True), (False, True), (True, False)])
def test_kernels_match_autograd_gradients_hvps_and_running_stats(train, affine, track):
    torch.manual_seed(0)
    model = Mixed(affine, track).double().train(train)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
    x = torch.randn(6, 2, 9, 9, dtype=torch.float64)
    v = [torch.randn_like(p) for p in model.parameters()]
    g0, h0, s0 = _grad_hvp_state(model, x, v, kernels=False)
    g1, h1, s1 = _grad_hvp_state(model, x, v, kernels=True)
    scale = max(float(t.abs().max()) for t in h0)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12)
    for a, b in zip(h0, h1):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12 * scale)
    for k in s0:  # train-mode running statistics are updated as F.batch_norm does
        torch.testing.assert_close(s1[k], s0[k], rtol=1e-12, atol=1e-12)


def test_gradgradcheck_of_the_batch_norm_and_conv_kernels():
    torch.manual_seed(1)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)

    def f(x, w, b, k):
        with SecondOrderKernels():
            h = nn.functional.batch_norm(x, None, None, w, b, training=True)
            return nn.functional.conv2d(h, k, None, 2, 1)

    assert torch.autograd.gradgradcheck(f, (x, w, b, k))


def test_batch_norm_keeps_its_single_value_error():
    with SecondOrderKernels(), pytest.raises(ValueError, match="more than 1 value per channel"):
        nn.functional.batch_norm(torch.randn(1, 3), None, None, training=True)
