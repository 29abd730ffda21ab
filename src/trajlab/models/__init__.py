"""Models by name: CIFAR and ImageNet-style ResNets, small nets for MNIST, and optional external ones.

This package knows nothing of training. Typical use::

    model = build_model("resnet20", num_classes=10, in_channels=3)
    count_parameters(model)  # 269_722
"""

from trajlab.models.cifar_resnet import CifarResNet
from trajlab.models.errors import ModelError
from trajlab.models.registry import available_models, build_model, count_parameters
from trajlab.models.resnet import ResNet
from trajlab.models.small import MLP, SimpleCNN

__all__ = [
    "MLP",
    "CifarResNet",
    "ModelError",
    "ResNet",
    "SimpleCNN",
    "available_models",
    "build_model",
    "count_parameters",
]
