"""The loss-hook interface (trajlab.objective): criteria detection, batch helpers, one-line errors."""

import functools
from collections import namedtuple

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from trajlab.objective import (
    SupervisedLoss,
    as_loss_hook,
    batch_size,
    batch_to,
    check_batch,
    check_loss,
    is_criterion,
    supervised,
)


def test_criteria_are_wrapped_and_hooks_pass_through():
    for crit in (
        F.cross_entropy,
        nn.CrossEntropyLoss(),
        functools.partial(F.cross_entropy, reduction="mean"),
    ):
        assert is_criterion(crit)
        assert isinstance(as_loss_hook(crit), SupervisedLoss)

    def hook(model, batch):
        return model(batch["x"]).sum()

    assert as_loss_hook(hook) is hook and not is_criterion(hook)
    wrapped = supervised(F.mse_loss)
    assert as_loss_hook(wrapped) is wrapped and repr(wrapped) == "supervised(mse_loss)"
    with pytest.raises(TypeError, match="callable"):
        as_loss_hook(3)
    with pytest.raises(TypeError, match="callable criterion"):
        supervised("mse")


def test_supervised_equals_criterion_and_rejects_other_batches():
    model = nn.Linear(3, 2)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
    assert torch.equal(supervised(F.cross_entropy)(model, (x, y)), F.cross_entropy(model(x), y))
    with pytest.raises(TypeError, match=r"\(inputs, targets\) pair .* got a dict with keys \['x', 'y'\]"):
        supervised(F.cross_entropy)(model, {"x": x, "y": y})
    with pytest.raises(TypeError, match="pair for the criterion"):
        check_batch(x, loss_fn=supervised(F.cross_entropy))


def test_batch_helpers_on_nested_batches():
    pair = namedtuple("Pair", "x y")
    batch = {"ids": torch.zeros(5, 7), "extra": [pair(torch.ones(5), 3)], "name": "b"}
    moved = batch_to(batch, "cpu")
    assert type(moved["extra"][0]) is pair and moved["extra"][0].y == 3 and moved["name"] == "b"
    assert batch_to(batch, None) is batch
    assert batch_size(batch) == 5 and batch_size((torch.zeros(2, 3), torch.zeros(9))) == 2
    assert check_batch(batch) is batch
    with pytest.raises(TypeError, match="holds no tensor"):
        check_batch({"a": 1})
    with pytest.raises(TypeError, match="must be a tensor, a tuple/list or a dict"):
        check_batch(3)
    with pytest.raises(TypeError, match="leading batch dimension"):
        batch_size(torch.tensor(1.0))


def test_check_loss_says_what_was_expected():
    assert check_loss(torch.tensor([2.0])).shape == ()
    with pytest.raises(TypeError, match="scalar tensor, got float"):
        check_loss(1.0)
    with pytest.raises(TypeError, match=r"shape \(3,\).*\.mean\(\)"):
        check_loss(torch.ones(3))
    with pytest.raises(TypeError, match=r"model\(\*\*batch\)\.loss"):
        check_loss(namedtuple("Output", "loss logits")(torch.tensor(1.0), None))
