"""Every model runs on the inputs it is meant for, in both memory formats and under torch.func."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from trajlab.models import available_models, build_model

# Small widths keep the big nets fast; the layouts (and so the code paths) are those of the defaults.
SMALL_WIDTH = {"resnet18": 8, "resnet34": 8, "resnet50": 4, "resnet110": 4, "resnet56": 8}
NUM_CLASSES = 7


def small_model(name: str, in_channels: int = 3, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    width = SMALL_WIDTH.get(name)
    return build_model(name, num_classes=NUM_CLASSES, in_channels=in_channels, width=width, **kwargs)


CASES = [(name, {}, 32) for name in available_models()]
CASES += [(name, {}, 28) for name in ("simple_cnn", "mlp")]
CASES += [(name, {"stem": "imagenet"}, 64) for name in ("resnet18", "resnet34", "resnet50")]


@pytest.mark.parametrize(("name", "kwargs", "size"), CASES)
@pytest.mark.parametrize("in_channels", [1, 3])
def test_output_shape(name, kwargs, size, in_channels):
    model = small_model(name, in_channels, **kwargs)
    logits = model(torch.randn(2, in_channels, size, size))
    assert logits.shape == (2, NUM_CLASSES)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(("name", "kwargs", "size"), CASES)
def test_channels_last_matches_contiguous(name, kwargs, size):
    model = small_model(name, **kwargs).eval()
    x = torch.randn(2, 3, size, size)
    expected = model(x)
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    got = model_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_channels_last_matches_contiguous_in_training_mode():
    # Batch statistics instead of running ones; also the running-stat updates must agree.
    model = small_model("resnet20")
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(
        model_cl(x.to(memory_format=torch.channels_last)), model(x), rtol=1e-4, atol=1e-5
    )
    torch.testing.assert_close(model_cl.state_dict(), model.state_dict(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", available_models())
def test_functional_call_matches_forward(name):
    model = small_model(name).eval()
    x = torch.randn(2, 3, 32, 32)
    state = {
        k: v.clone() for k, v in {**dict(model.named_parameters()), **dict(model.named_buffers())}.items()
    }
    torch.testing.assert_close(functional_call(model, state, (x,)), model(x))


@pytest.mark.parametrize("name", ["resnet20", "resnet18", "resnet50", "simple_cnn"])
@pytest.mark.parametrize("training", [False, True])
def test_func_grad_matches_autograd(name, training):
    # What the probes do: gradients of a loss as a pure function of the parameters. The buffers go in
    # as an argument, not a closure: in training mode BN updates them in place, which torch.func
    # refuses for captured tensors.
    model = small_model(name).train(training)
    x, y = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2])
    params = {k: p.detach() for k, p in model.named_parameters()}
    buffers = {k: b.clone() for k, b in model.named_buffers()}

    def loss_fn(p, b):
        return F.cross_entropy(functional_call(model, {**p, **b}, (x,)), y)

    grads = torch.func.grad(loss_fn)(params, buffers)
    F.cross_entropy(model(x), y).backward()
    for key, p in model.named_parameters():
        torch.testing.assert_close(grads[key], p.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(buffers, dict(model.named_buffers()))


def test_forward_does_not_modify_input():
    model = small_model("resnet20")
    x = torch.randn(2, 3, 32, 32)
    before = x.clone()
    model(x).sum().backward()
    assert torch.equal(x, before)


def test_resnet20_overfits_a_tiny_batch():
    torch.manual_seed(0)
    model = build_model("resnet20", width=4)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(50):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    with torch.no_grad():
        assert (model(x).argmax(1) == y).all()
