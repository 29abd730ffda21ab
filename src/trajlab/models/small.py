"""Small networks without batch norm for MNIST-scale data and quick tests."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trajlab.models.init import init_weights_

# Both small nets pool their features to a fixed grid, so one net takes 28x28 (MNIST) and 32x32
# (CIFAR) inputs alike without knowing the image size up front. For 28x28 inputs the pooling is
# exactly the identity (every window is one pixel), so on MNIST they are the plain textbook nets.
_CNN_GRID = 7  # a 28x28 image is 7x7 after two 2x2 max pools
_MLP_GRID = 28


class SimpleCNN(nn.Module):
    """Two conv-ReLU-maxpool stages and a two-layer classifier, no batch norm.

    conv3x3(in -> w) ReLU maxpool2, conv3x3(w -> 2w) ReLU maxpool2, adaptive avg pool to 7x7,
    flatten, linear(2w * 49 -> 4w) ReLU, linear(4w -> classes); w=32 gives 32, 64 and 128 units
    (about 421k parameters for MNIST).
    """

    def __init__(self, *, num_classes: int = 10, in_channels: int = 1, width: int = 32) -> None:
        """Build the network.

        Args:
            num_classes: Outputs of the final linear layer.
            in_channels: Channels of the input images.
            width: ``w``, channels of the first conv.
        """
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc1 = nn.Linear(2 * width * _CNN_GRID * _CNN_GRID, 4 * width)
        self.fc2 = nn.Linear(4 * width, num_classes)
        init_weights_(self)

    def forward(self, x: Tensor) -> Tensor:
        """Map images (B, in_channels, H, W) to logits (B, num_classes)."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, w, H/2, W/2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 2w, H/4, W/4)
        x = torch.flatten(F.adaptive_avg_pool2d(x, _CNN_GRID), 1)  # (B, 2w * 49)
        return self.fc2(F.relu(self.fc1(x)))


class MLP(nn.Module):
    """flatten -> linear(width) ReLU -> linear(width) ReLU -> linear(classes).

    The input is first average-pooled to 28x28 (the identity for MNIST-sized images), so the first
    layer has ``in_channels * 784`` inputs whatever the image size.
    """

    def __init__(self, *, num_classes: int = 10, in_channels: int = 1, width: int = 256) -> None:
        """Build the network.

        Args:
            num_classes: Outputs of the final linear layer.
            in_channels: Channels of the input images.
            width: Units in each hidden layer.
        """
        super().__init__()
        self.fc1 = nn.Linear(in_channels * _MLP_GRID * _MLP_GRID, width)
        self.fc2 = nn.Linear(width, width)
        self.fc3 = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Map images (B, in_channels, H, W) to logits (B, num_classes)."""
        x = torch.flatten(F.adaptive_avg_pool2d(x, _MLP_GRID), 1)  # (B, in_channels * 784)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)
