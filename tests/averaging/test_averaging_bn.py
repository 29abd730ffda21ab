"""update_bn: recalibrates, restores momentum and modes, never touches grads or parameters."""

from __future__ import annotations

import pytest
import torch
from averaging_fixtures import tiny_net
from torch import nn

from trajlab.averaging import update_bn


def test_update_bn_closed_form_and_restores_state():
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(3), nn.Linear(3, 2), nn.Dropout(0.5))
    model.eval()
    model[2].train()  # mixed modes must come back exactly
    model[0].momentum = 0.3
    model[0].weight.grad = torch.full((3,), 7.0)
    params = [p.clone() for p in model.parameters()]
    batches = [(torch.randn(16, 3) * 2 + 1, torch.zeros(16)) for _ in range(4)]
    n = update_bn(model, iter(batches + batches), max_batches=4)
    assert n == 4
    means = torch.stack([x.mean(0) for x, _ in batches]).mean(0)
    varis = torch.stack([x.var(0) for x, _ in batches]).mean(0)
    torch.testing.assert_close(model[0].running_mean, means)
    torch.testing.assert_close(model[0].running_var, varis)
    assert model[0].momentum == 0.3 and not model.training and not model[0].training and model[2].training
    assert torch.equal(model[0].weight.grad, torch.full((3,), 7.0)) and model[1].weight.grad is None
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))


def test_update_bn_no_bn_and_empty():
    assert update_bn(nn.Linear(2, 2), iter([torch.zeros(1, 2)])) == 0
    model = tiny_net()
    before = model[1].running_mean.clone()
    with pytest.raises(ValueError, match="no batches"):
        update_bn(model, [])
    assert torch.equal(model[1].running_mean, before) and model[1].momentum == 0.1
