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
    n = update_bn(iter(batches + batches), model, max_batches=4)
    assert n == 4
    means = torch.stack([x.mean(0) for x, _ in batches]).mean(0)
    varis = torch.stack([x.var(0) for x, _ in batches]).mean(0)
    torch.testing.assert_close(model[0].running_mean, means)
    torch.testing.assert_close(model[0].running_var, varis)
    assert model[0].momentum == 0.3 and not model.training and not model[0].training and model[2].training
    assert torch.equal(model[0].weight.grad, torch.full((3,), 7.0)) and model[1].weight.grad is None
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))


def test_update_bn_no_bn_and_empty():
    assert update_bn(iter([torch.zeros(1, 2)]), nn.Linear(2, 2)) == 0
    model = tiny_net()
    before = model[1].running_mean.clone()
    with pytest.raises(ValueError, match="no batches"):
        update_bn([], model)
    assert torch.equal(model[1].running_mean, before) and model[1].momentum == 0.1


def test_update_bn_old_argument_order_warns_and_works():
    torch.manual_seed(0)
    batches = [torch.randn(8, 3) for _ in range(2)]
    new, old = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    assert update_bn(batches, new) == 2
    with pytest.warns(DeprecationWarning, match=r"update_bn\(batches, model\)"):
        assert update_bn(old, batches) == 2
    torch.testing.assert_close(old.running_mean, new.running_mean, rtol=0, atol=0)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        update_bn(batches, batches)


def test_update_bn_custom_forward_for_dict_batches():
    model = nn.Sequential(nn.BatchNorm1d(3))
    batches = [{"inputs": torch.randn(8, 3) + 5, "labels": torch.zeros(8)} for _ in range(3)]
    update_bn(batches, model, forward=lambda m, b: m(b["inputs"]))
    means = torch.stack([b["inputs"].mean(0) for b in batches]).mean(0)
    torch.testing.assert_close(model[0].running_mean, means)


def test_evaluate_with_bn_says_which_statistics():
    from trajlab.averaging import evaluate_with_bn

    model = nn.Sequential(nn.BatchNorm1d(3))
    batches = [torch.randn(8, 3) + 2 for _ in range(2)]

    def evaluate(m):
        return {"mean": float(m[0].running_mean.mean())}

    assert evaluate_with_bn(model, evaluate, None) == ("running", {"mean": 0.0})
    bn, metrics = evaluate_with_bn(model, evaluate, batches)
    assert bn == "recalibrated" and metrics["mean"] > 1
    assert evaluate_with_bn(nn.Linear(3, 3), lambda m: {}, batches)[0] == "none (no BatchNorm)"
