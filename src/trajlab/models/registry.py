"""Build a model by name: the registry behind ``build_model`` and ``available_models``.

Names: the CIFAR ResNets ``resnet20/32/44/56/110`` (option-A shortcuts, width ``w`` = 16), the
projection-shortcut ``resnet18/34/50`` (base width 64, CIFAR stem unless ``stem="imagenet"``),
``simple_cnn`` and ``mlp`` for MNIST-scale data, and ``torchvision:NAME`` / ``timm:NAME`` from those
optional packages.
"""

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from trajlab.models.cifar_resnet import CifarResNet
from trajlab.models.errors import ModelError
from trajlab.models.external import BUILDERS, PREFIXES
from trajlab.models.resnet import STEMS, BasicBlock, Bottleneck, ResNet
from trajlab.models.small import MLP, SimpleCNN


@dataclass(frozen=True)
class _Entry:
    """How to build one named model.

    Attributes:
        make: Called as ``make(num_classes=, in_channels=, width=, stem=, zero_init_residual=)`` with
            validated arguments; ``width`` is never None (the default is filled in).
        default_width: The width used when ``build_model`` gets ``width=None``.
        stems: Accepted ``stem`` values (``None`` is always accepted and means the first one).
        residual: Whether ``zero_init_residual`` applies.
    """

    make: Callable[..., nn.Module]
    default_width: int
    stems: tuple[str, ...] = ()
    residual: bool = False


def _cifar_resnet(n: int) -> _Entry:
    def make(
        *, num_classes: int, in_channels: int, width: int, stem: str, zero_init_residual: bool
    ) -> nn.Module:
        return CifarResNet(
            n,
            num_classes=num_classes,
            in_channels=in_channels,
            width=width,
            zero_init_residual=zero_init_residual,
        )

    return _Entry(make, default_width=16, stems=("cifar",), residual=True)


def _resnet(block: type[BasicBlock] | type[Bottleneck], layers: tuple[int, int, int, int]) -> _Entry:
    def make(
        *, num_classes: int, in_channels: int, width: int, stem: str, zero_init_residual: bool
    ) -> nn.Module:
        return ResNet(
            block,
            layers,
            num_classes=num_classes,
            in_channels=in_channels,
            width=width,
            stem=stem,
            zero_init_residual=zero_init_residual,
        )

    return _Entry(make, default_width=64, stems=STEMS, residual=True)


def _small(cls: type[SimpleCNN] | type[MLP], default_width: int) -> _Entry:
    def make(
        *, num_classes: int, in_channels: int, width: int, stem: str | None, zero_init_residual: bool
    ) -> nn.Module:
        return cls(num_classes=num_classes, in_channels=in_channels, width=width)

    return _Entry(make, default_width=default_width)


_REGISTRY: dict[str, _Entry] = {
    # depth 6n + 2
    "resnet20": _cifar_resnet(3),
    "resnet32": _cifar_resnet(5),
    "resnet44": _cifar_resnet(7),
    "resnet56": _cifar_resnet(9),
    "resnet110": _cifar_resnet(18),
    "resnet18": _resnet(BasicBlock, (2, 2, 2, 2)),
    "resnet34": _resnet(BasicBlock, (3, 4, 6, 3)),
    "resnet50": _resnet(Bottleneck, (3, 4, 6, 3)),
    "simple_cnn": _small(SimpleCNN, 32),
    "mlp": _small(MLP, 256),
}


def available_models() -> list[str]:
    """Names of the built-in models, in registry order.

    ``torchvision:NAME`` and ``timm:NAME`` are accepted by ``build_model`` too but not listed.
    """
    return list(_REGISTRY)


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of scalar parameters in ``model`` (buffers such as BN running stats excluded).

    Args:
        model: Any module; shared parameters are counted once.
        trainable_only: Count only parameters with ``requires_grad``.

    Returns:
        The sum of ``p.numel()`` over the parameters.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _check_positive_int(value: object, what: str, name: str) -> None:
    # bool is an int subclass; True as a width is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"{what} for model {name!r} must be a positive int, got {value!r}")


def _unknown_name(name: str) -> ModelError:
    names = available_models()
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    listed = ", ".join(names)
    return ModelError(f"unknown model {name!r}; {hint}available: {listed}, or torchvision:NAME / timm:NAME")


def _build_external(
    name: str, *, num_classes: int, in_channels: int, width: int | None, stem: str | None, zero_init: bool
) -> nn.Module:
    prefix, _, model_name = name.partition(":")
    if prefix not in BUILDERS:
        raise ModelError(
            f"unknown model source {prefix!r} in {name!r}; use one of "
            f"{', '.join(p + ':NAME' for p in PREFIXES)}, or a built-in name: {', '.join(available_models())}"
        )
    if not model_name:
        raise ModelError(f"model {name!r} lacks a name after the colon, e.g. {prefix}:resnet18")
    for arg, value, default in (
        ("width", width, None),
        ("stem", stem, None),
        ("zero_init_residual", zero_init, False),
    ):
        if value != default:
            raise ModelError(
                f"{arg}={value!r} is not supported for {name!r}; configure it in {prefix} instead"
            )
    return BUILDERS[prefix](model_name, num_classes=num_classes, in_channels=in_channels)


def build_model(
    name: str,
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    width: int | None = None,
    stem: str | None = None,
    zero_init_residual: bool = False,
) -> nn.Module:
    """Build a randomly initialised model by name.

    Initialisation (built-in models): convs Kaiming-normal (fan_out, ReLU), BN weight 1 and bias 0,
    linear layers PyTorch's default; deterministic given ``torch.manual_seed``.

    Args:
        name: One of ``available_models()``, or ``"torchvision:NAME"`` / ``"timm:NAME"``.
        num_classes: Outputs of the classifier.
        in_channels: Channels of the input images (1 for MNIST, 3 for CIFAR/ImageNet).
        width: Scales the channels: ``w`` of the CIFAR ResNets (default 16; stages w, 2w, 4w), base
            width of resnet18/34/50 (default 64; stages w..8w), first conv of ``simple_cnn``
            (default 32), hidden units of ``mlp`` (default 256). Not supported for external models.
        stem: For resnet18/34/50 only: ``"cifar"`` (the default: 3x3 conv stride 1, no max pool, for
            32x32 images) or ``"imagenet"`` (7x7 conv stride 2 + max pool, for 224x224 images). The
            CIFAR ResNets accept ``"cifar"``; other models accept only None.
        zero_init_residual: ResNets only: zero the last BN weight of every residual block.

    Returns:
        The model, in training mode, on the CPU, in float32.

    Raises:
        ModelError: Unknown name (the message lists the available ones), a bad argument, or a
            missing optional package (the message gives the pip command).
    """
    if not isinstance(name, str):
        raise ModelError(f"model name must be a str, got {type(name).__name__}")
    _check_positive_int(num_classes, "num_classes", name)
    _check_positive_int(in_channels, "in_channels", name)
    if width is not None:
        _check_positive_int(width, "width", name)
    if ":" in name:
        return _build_external(
            name,
            num_classes=num_classes,
            in_channels=in_channels,
            width=width,
            stem=stem,
            zero_init=zero_init_residual,
        )
    entry = _REGISTRY.get(name)
    if entry is None:
        raise _unknown_name(name)
    if stem is not None and stem not in entry.stems:
        accepted = f"one of {', '.join(map(repr, entry.stems))} or None" if entry.stems else "None"
        raise ModelError(f"stem={stem!r} is not valid for model {name!r}; use {accepted}")
    if zero_init_residual and not entry.residual:
        raise ModelError(f"zero_init_residual applies only to ResNets, not to {name!r}")
    return entry.make(
        num_classes=num_classes,
        in_channels=in_channels,
        width=entry.default_width if width is None else width,
        stem=stem if stem is not None else (entry.stems[0] if entry.stems else None),
        zero_init_residual=zero_init_residual,
    )
