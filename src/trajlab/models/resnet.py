"""ResNet-18/34/50 with projection shortcuts, in torchvision's layout.

He et al. 2016, "Deep Residual Learning for Image Recognition", table 1, with the torchvision
conventions: bias-free convs each followed by BN, 1x1 conv + BN projection shortcuts where the shape
changes (option B), and in the bottleneck the stride on the 3x3 conv ("ResNet v1.5"). Module names
match torchvision's (``conv1``, ``layer1.0.downsample.0``, ``fc``...), so its state dicts load as is;
parameter counts equal torchvision's (resnet50, 1000 classes: 25,557,032).

Two stems: ``"imagenet"`` (7x7 stride-2 conv, 3x3 stride-2 max pool: a 224x224 image reaches the
first stage at 56x56) and ``"cifar"`` (one 3x3 stride-1 conv, no pooling: a 32x32 image reaches the
first stage at 32x32).
"""

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trajlab.models.init import init_weights_

Stem = Literal["cifar", "imagenet"]
STEMS: tuple[str, ...] = ("cifar", "imagenet")


def _projection(in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    """1x1 conv + BN shortcut where the block changes shape; ``None`` means identity."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut (resnet18/34)."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        """Build the block.

        Args:
            in_channels: Input channels.
            planes: Output channels (``planes * expansion``).
            stride: Stride of the first conv.
        """
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _projection(in_channels, planes, stride)

    def last_bn(self) -> nn.BatchNorm2d:
        """The BN whose weight ``zero_init_residual`` zeroes."""
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to x of shape (B, C_in, H, W); returns (B, planes, H / stride, W / stride)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, each with BN, plus a shortcut (resnet50)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        """Build the block.

        Args:
            in_channels: Input channels.
            planes: Channels of the inner 3x3 conv; the output has ``4 * planes``.
            stride: Stride of the 3x3 conv (v1.5; the original paper strides the first 1x1).
        """
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample = _projection(in_channels, out_channels, stride)

    def last_bn(self) -> nn.BatchNorm2d:
        """The BN whose weight ``zero_init_residual`` zeroes."""
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to x of shape (B, C_in, H, W); returns (B, 4 planes, H / stride, W / stride)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNet(nn.Module):
    """ResNet with four stages of ``(w, 2w, 4w, 8w)`` planes and a CIFAR or ImageNet stem."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        blocks_per_stage: tuple[int, int, int, int],
        *,
        num_classes: int = 1000,
        in_channels: int = 3,
        width: int = 64,
        stem: Stem = "cifar",
        zero_init_residual: bool = False,
    ) -> None:
        """Build the network.

        Args:
            block: ``BasicBlock`` (resnet18/34) or ``Bottleneck`` (resnet50).
            blocks_per_stage: Blocks in each of the four stages, e.g. ``(3, 4, 6, 3)``.
            num_classes: Outputs of the final linear layer.
            in_channels: Channels of the input images.
            width: ``w``, planes of the first stage (64 in the paper).
            stem: ``"cifar"`` (3x3 conv, stride 1, no max pool) or ``"imagenet"`` (7x7 conv stride 2,
                then 3x3 max pool stride 2).
            zero_init_residual: Start the last BN of every block at weight 0, so that every residual
                branch is zero at initialisation (Goyal et al. 2017).
        """
        super().__init__()
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(width)
        channels = width
        for stage, num_blocks in enumerate(blocks_per_stage):
            planes = width * 2**stage
            stride = 1 if stage == 0 else 2
            layer = []
            for i in range(num_blocks):
                layer.append(block(channels, planes, stride if i == 0 else 1))
                channels = planes * block.expansion
            # Attribute names layer1..layer4 as in torchvision, so its state dicts load.
            self.add_module(f"layer{stage + 1}", nn.Sequential(*layer))
        self.fc = nn.Linear(channels, num_classes)
        init_weights_(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn().weight)

    def forward(self, x: Tensor) -> Tensor:
        """Map images (B, in_channels, H, W) to logits (B, num_classes)."""
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))  # (B, w, H, W) cifar; (B, w, H/4, W/4) imagenet
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)  # (B, 8w * expansion, H/8, W/8) with the cifar stem
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)  # (B, 8w * expansion)
        return self.fc(x)
