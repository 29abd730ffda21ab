"""torchvision:NAME and timm:NAME: the missing-package errors, and the adapters on stand-in packages."""

import sys
import types

import pytest
import torch
from torch import nn

from trajlab.models import ModelError, build_model


@pytest.mark.parametrize("package", ["torchvision", "timm"])
def test_missing_package_error_gives_the_pip_command(monkeypatch, package):
    # None in sys.modules makes the import fail whether or not the package is installed.
    monkeypatch.setitem(sys.modules, package, None)
    monkeypatch.setitem(sys.modules, f"{package}.models", None)
    with pytest.raises(ModelError) as info:
        build_model(f"{package}:resnet18")
    message = str(info.value)
    assert f"pip install {package}" in message and f"'{package}:resnet18'" in message
    assert "\n" not in message


def _tiny_net(num_classes: int) -> nn.Module:
    # The first conv sits inside a nested module and after a sibling, to test "first in registration order".
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, num_classes),
    )


@pytest.fixture
def fake_torchvision(monkeypatch):
    calls = []
    models = types.ModuleType("torchvision.models")
    models.list_models = lambda: ["resnet18", "resnet34"]

    def get_model(name, *, weights, num_classes):
        calls.append((name, weights, num_classes))
        return _tiny_net(num_classes)

    models.get_model = get_model
    package = types.ModuleType("torchvision")
    package.models = models
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    return calls


@pytest.fixture
def fake_timm(monkeypatch):
    calls = []
    timm = types.ModuleType("timm")
    timm.list_models = lambda: ["resnet26d", "vit_tiny_patch16_224"]

    def create_model(name, **kwargs):
        calls.append((name, kwargs))
        return _tiny_net(kwargs["num_classes"])

    timm.create_model = create_model
    monkeypatch.setitem(sys.modules, "timm", timm)
    return calls


def test_torchvision_builds_without_weights(fake_torchvision):
    model = build_model("torchvision:resnet18", num_classes=5)
    assert fake_torchvision == [("resnet18", None, 5)]
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 5)


def test_torchvision_replaces_the_first_conv_for_other_in_channels(fake_torchvision):
    model = build_model("torchvision:resnet18", num_classes=5, in_channels=1)
    first, second = model[0][0], model[1]
    assert (first.in_channels, first.out_channels, first.kernel_size, first.padding) == (1, 4, (3, 3), (1, 1))
    assert second.in_channels == 4
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 5)


def test_torchvision_unknown_name_suggests(fake_torchvision):
    with pytest.raises(ModelError, match="did you mean torchvision:resnet18"):
        build_model("torchvision:resnet81")


def test_timm_passes_in_channels_through(fake_timm):
    build_model("timm:resnet26d", num_classes=3, in_channels=1)
    assert fake_timm == [("resnet26d", {"pretrained": False, "num_classes": 3, "in_chans": 1})]


def test_timm_unknown_name(fake_timm):
    with pytest.raises(ModelError, match="timm has no model 'nope'"):
        build_model("timm:nope")
