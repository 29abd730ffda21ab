"""Registry contract: exact parameter counts (closed forms and published numbers), errors, seeding."""

import pytest
import torch
from torch import nn

from trajlab.models import CifarResNet, ModelError, available_models, build_model, count_parameters
from trajlab.models.cifar_resnet import CifarBasicBlock, shortcut_option_a

CIFAR_DEPTHS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9, "resnet110": 18}


def conv_bn(c_in: int, c_out: int, k: int) -> int:
    """Parameters of a bias-free k x k conv followed by a BN (weight and bias)."""
    return k * k * c_in * c_out + 2 * c_out


def cifar_resnet_count(n: int, w: int, c: int, k: int) -> int:
    """Closed form for ResNet-(6n+2) with option-A shortcuts: only convs, BNs and the classifier."""
    total, ch = conv_bn(c, w, 3), w
    for out in (w, 2 * w, 4 * w):
        for _ in range(n):
            total += conv_bn(ch, out, 3) + conv_bn(out, out, 3)
            ch = out
    return total + 4 * w * k + k


def resnet_count(bottleneck: bool, layers: tuple[int, ...], w: int, c: int, k: int, stem_k: int) -> int:
    """Closed form for torchvision-layout ResNets with 1x1 conv + BN projection shortcuts."""
    expansion = 4 if bottleneck else 1
    total, ch = conv_bn(c, w, stem_k), w
    for stage, num_blocks in enumerate(layers):
        p = w * 2**stage
        for i in range(num_blocks):
            if bottleneck:
                total += conv_bn(ch, p, 1) + conv_bn(p, p, 3) + conv_bn(p, 4 * p, 1)
            else:
                total += conv_bn(ch, p, 3) + conv_bn(p, p, 3)
            if (stage > 0 and i == 0) or ch != p * expansion:
                total += conv_bn(ch, p * expansion, 1)
            ch = p * expansion
    return total + ch * k + k


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        # He et al. 2016 table 6 ("0.27M", "0.85M"); the exact figures include BN weights and biases.
        ("resnet20", {}, 269_722),
        ("resnet56", {}, 853_018),
        # The torchvision counts (torchvision.models.resnet18/34/50(num_classes=1000)).
        ("resnet18", {}, 11_173_962),
        ("resnet18", {"stem": "imagenet", "num_classes": 1000}, 11_689_512),
        ("resnet34", {"stem": "imagenet", "num_classes": 1000}, 21_797_672),
        ("resnet50", {"stem": "imagenet", "num_classes": 1000}, 25_557_032),
    ],
)
def test_published_parameter_counts(name, kwargs, expected):
    assert count_parameters(build_model(name, **kwargs)) == expected


@pytest.mark.parametrize("name", list(CIFAR_DEPTHS))
@pytest.mark.parametrize(("w", "c", "k"), [(16, 3, 10), (4, 1, 7), (32, 3, 100)])
def test_cifar_resnet_count_matches_closed_form(name, w, c, k):
    model = build_model(name, width=w, in_channels=c, num_classes=k)
    assert count_parameters(model) == cifar_resnet_count(CIFAR_DEPTHS[name], w, c, k)


@pytest.mark.parametrize(
    ("name", "bottleneck", "layers"),
    [("resnet18", False, (2, 2, 2, 2)), ("resnet34", False, (3, 4, 6, 3)), ("resnet50", True, (3, 4, 6, 3))],
)
@pytest.mark.parametrize(
    ("w", "c", "k", "stem"), [(64, 3, 10, "cifar"), (8, 1, 5, "imagenet"), (16, 3, 10, "cifar")]
)
def test_resnet_count_matches_closed_form(name, bottleneck, layers, w, c, k, stem):
    model = build_model(name, width=w, in_channels=c, num_classes=k, stem=stem)
    stem_k = 7 if stem == "imagenet" else 3
    assert count_parameters(model) == resnet_count(bottleneck, layers, w, c, k, stem_k)


def test_width_scaling_is_nearly_quadratic():
    # Conv weights scale as w^2, BN, stem and classifier weights as w: doubling w multiplies the count
    # by a little under 4. The exact values are checked against the closed form above.
    counts = {w: count_parameters(build_model("resnet20", width=w)) for w in (8, 16, 32)}
    assert counts[16] == 269_722
    assert 3.9 < counts[16] / counts[8] < counts[32] / counts[16] < 4.0


def test_count_parameters_trainable_only():
    model = build_model("mlp", in_channels=1)
    total = count_parameters(model)
    model.fc3.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == total - (256 * 10 + 10)
    assert count_parameters(model) == total


def test_option_a_shortcut_is_parameter_free():
    block = CifarBasicBlock(16, 32, stride=2)
    own = sum(count_parameters(m) for m in (block.conv1, block.bn1, block.conv2, block.bn2))
    assert count_parameters(block) == own
    assert [name for name, _ in block.named_children()] == ["conv1", "bn1", "conv2", "bn2"]


def test_option_a_shortcut_subsamples_and_pads_with_zeros():
    x = torch.randn(2, 3, 5, 6)
    out = shortcut_option_a(x, out_channels=8, stride=2)
    assert out.shape == (2, 8, 3, 3)
    assert torch.equal(out[:, :3], x[:, :, ::2, ::2])
    assert torch.count_nonzero(out[:, 3:]) == 0
    assert torch.equal(shortcut_option_a(x, out_channels=3, stride=1), x)


def test_available_models_lists_every_builtin():
    names = available_models()
    assert names == [
        "resnet20",
        "resnet32",
        "resnet44",
        "resnet56",
        "resnet110",
        "resnet18",
        "resnet34",
        "resnet50",
        "simple_cnn",
        "mlp",
    ]
    names.append("mutated")
    assert "mutated" not in available_models()


def test_unknown_name_lists_available_models_and_suggests():
    with pytest.raises(ModelError) as info:
        build_model("resnet_20")
    message = str(info.value)
    assert "'resnet_20'" in message and "did you mean 'resnet20'" in message
    for name in available_models():
        assert name in message
    assert "torchvision:NAME" in message and "\n" not in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"width": 0}, "width"),
        ({"width": -4}, "width"),
        ({"width": 2.5}, "width"),
        ({"width": True}, "width"),
        ({"in_channels": 0}, "in_channels"),
        ({"in_channels": "3"}, "in_channels"),
        ({"num_classes": 0}, "num_classes"),
    ],
)
def test_bad_arguments_are_model_errors(kwargs, match):
    with pytest.raises(ModelError, match=match):
        build_model("resnet20", **kwargs)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("resnet20", {"stem": "imagenet"}),
        ("resnet18", {"stem": "imagnet"}),
        ("simple_cnn", {"stem": "cifar"}),
        ("mlp", {"zero_init_residual": True}),
        ("torchvision:resnet18", {"width": 8}),
        ("torchvision:resnet18", {"stem": "cifar"}),
        ("timm:resnet18", {"zero_init_residual": True}),
        ("torchvision:", {}),
        ("keras:resnet50", {}),
    ],
)
def test_arguments_that_do_not_apply_are_model_errors(name, kwargs):
    with pytest.raises(ModelError, match=name.partition(":")[0]):
        build_model(name, **kwargs)


def test_default_stem_is_cifar():
    model = build_model("resnet18", width=8)
    assert model.conv1.kernel_size == (3, 3) and isinstance(model.maxpool, nn.Identity)
    model = build_model("resnet18", width=8, stem="imagenet")
    assert model.conv1.kernel_size == (7, 7) and isinstance(model.maxpool, nn.MaxPool2d)
    assert isinstance(build_model("resnet20", stem="cifar"), CifarResNet)


@pytest.mark.parametrize(("name", "width"), [("resnet20", 4), ("resnet18", 8), ("resnet50", 8)])
def test_zero_init_residual_zeroes_the_last_bn_of_every_block(name, width):
    suffix = ".bn3" if name == "resnet50" else ".bn2"

    def last_bn_weights(model):
        return [m.weight for path, m in model.named_modules() if path.endswith(suffix)]

    plain = last_bn_weights(build_model(name, width=width))
    zeroed = last_bn_weights(build_model(name, width=width, zero_init_residual=True))
    assert len(zeroed) == len(plain) > 0
    assert all(torch.all(w == 0) for w in zeroed)
    assert all(torch.all(w == 1) for w in plain)


def test_initialisation():
    model = build_model("resnet20")
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)
    # Kaiming normal, fan_out: std = sqrt(2 / (out_channels * k * k)); the last stage's 3x3 64->64 convs
    # have 36,864 weights, enough to pin the std within a few percent.
    conv = model.blocks[-1].conv2
    assert conv.weight.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.03)


@pytest.mark.parametrize("name", available_models())
def test_same_seed_same_weights(name):
    kwargs = {"width": 4} if name.startswith("resnet") else {}

    def weights(seed):
        torch.manual_seed(seed)
        return build_model(name, **kwargs).state_dict()

    first, again, other = weights(0), weights(0), weights(1)
    assert first.keys() == again.keys()
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert any(not torch.equal(first[key], other[key]) for key in first if first[key].is_floating_point())
