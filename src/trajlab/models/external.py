"""Models from torchvision and timm, imported only when asked for.

Neither package is a dependency: an unpinned ``pip install torchvision`` can pull a multi-GB CUDA torch
over the pinned CPU one, so a missing package is a ``ModelError`` that says how to install it safely.
"""

import difflib
import importlib
from collections.abc import Callable
from types import ModuleType

import torch
from torch import nn

from trajlab.models.errors import ModelError

PREFIXES: tuple[str, ...] = ("torchvision", "timm")


def _install_hint(package: str) -> str:
    """The pip command(s) that add ``package`` without replacing the installed torch."""
    # torchvision must come from the index that built the installed torch ("2.13.0+cpu" -> .../whl/cpu);
    # an unpinned install from PyPI brings its own (CUDA) torch. timm needs torchvision, so it goes first.
    release, _, build = torch.__version__.partition("+")
    index = f" --index-url https://download.pytorch.org/whl/{build}" if build else ""
    torchvision = f"pip install torchvision{index} (the release made for torch {release})"
    return torchvision if package == "torchvision" else f"{torchvision}, then pip install {package}"


def _import(package: str, module: str, spec: str) -> ModuleType:
    """Import ``module`` from an optional ``package`` or raise a ModelError with the pip command."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ModelError(
            f"model {spec!r} needs the optional package {package!r}, which is not installed; "
            f"install it with: {_install_hint(package)}"
        ) from err


def _check_known(name: str, known: list[str], spec: str, package: str) -> None:
    """Raise a ModelError with close matches when ``name`` is not one of ``known``."""
    if name in known:
        return
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(f'{package}:{c}' for c in close)}?" if close else ""
    raise ModelError(f"unknown model {spec!r}: {package} has no model {name!r}{hint}")


def _replace_first_conv(model: nn.Module, in_channels: int, spec: str) -> None:
    """Swap the first ``nn.Conv2d`` (in registration order) for a fresh one with ``in_channels`` inputs."""
    for path, conv in model.named_modules():
        if not isinstance(conv, nn.Conv2d):
            continue
        if conv.groups != 1:
            raise ModelError(
                f"model {spec!r} starts with a grouped conv; it cannot take in_channels={in_channels}"
            )
        parent_path, _, attr = path.rpartition(".")
        new = nn.Conv2d(
            in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
        )
        # As torchvision initialises its convs (its ResNets and most others).
        nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
        setattr(model.get_submodule(parent_path), attr, new)
        return
    raise ModelError(f"model {spec!r} has no nn.Conv2d to adapt to in_channels={in_channels}; use 3")


def build_torchvision(name: str, *, num_classes: int, in_channels: int) -> nn.Module:
    """Build ``torchvision.models`` model ``name`` with random weights.

    Args:
        name: A name from ``torchvision.models.list_models()``, e.g. ``"resnet18"``.
        num_classes: Outputs of the classifier.
        in_channels: Input channels; when not 3 the first conv is replaced by a fresh one.

    Returns:
        The model, initialised by torchvision (no pretrained weights are downloaded).

    Raises:
        ModelError: torchvision is missing, or it has no model ``name``.
    """
    spec = f"torchvision:{name}"
    models = _import("torchvision", "torchvision.models", spec)
    _check_known(name, list(models.list_models()), spec, "torchvision")
    model = models.get_model(name, weights=None, num_classes=num_classes)
    if in_channels != 3:
        _replace_first_conv(model, in_channels, spec)
    return model


def build_timm(name: str, *, num_classes: int, in_channels: int) -> nn.Module:
    """Build ``timm`` model ``name`` with random weights.

    Args:
        name: A name from ``timm.list_models()``, e.g. ``"resnet26d"``.
        num_classes: Outputs of the classifier.
        in_channels: Input channels, passed to timm as ``in_chans`` (timm adapts its own stem).

    Returns:
        The model, initialised by timm (``pretrained=False``).

    Raises:
        ModelError: timm is missing, or it has no model ``name``.
    """
    spec = f"timm:{name}"
    timm = _import("timm", "timm", spec)
    _check_known(name, list(timm.list_models()), spec, "timm")
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)


BUILDERS: dict[str, Callable[..., nn.Module]] = {"torchvision": build_torchvision, "timm": build_timm}
