"""CIFAR ResNets of depth 6n+2 with parameter-free (option A) shortcuts.

He et al. 2016, "Deep Residual Learning for Image Recognition", sec. 4.2: a 3x3 conv to ``w`` channels,
three stages of ``n`` basic blocks with ``(w, 2w, 4w)`` channels at spatial sizes (32, 16, 8) for a
32x32 input, global average pooling and a linear classifier. When a block halves the resolution and
doubles the channels, its shortcut is a stride-2 subsample padded with zero channels (option A), so the
net has no parameters beyond those of the plain net: resnet20 (n=3, w=16) has 269,722.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trajlab.models.init import init_weights_


def shortcut_option_a(x: Tensor, out_channels: int, stride: int) -> Tensor:
    """Identity shortcut that subsamples and zero-pads channels (He et al. 2016, option A).

    Args:
        x: Block input, shape (B, C_in, H, W).
        out_channels: Channels of the block output, ``>= C_in``.
        stride: Spatial subsampling factor of the block (1 or 2).

    Returns:
        Shape (B, out_channels, ceil(H / stride), ceil(W / stride)); the first ``C_in`` channels
        are ``x`` subsampled, the rest are zeros.
    """
    if stride != 1:
        # A strided view, not a copy: keeps the op out-of-place for autograd and torch.func.
        x = x[:, :, ::stride, ::stride]
    extra = out_channels - x.shape[1]
    if extra > 0:
        # F.pad pads dimensions from the last backwards: (W_left, W_right, H_top, H_bottom, C_front, C_back).
        x = F.pad(x, (0, 0, 0, 0, 0, extra))
    return x


class CifarBasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an option-A shortcut: ``relu(bn(conv(relu(bn(conv(x))))) + s(x))``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        """Build the block.

        Args:
            in_channels: Input channels.
            out_channels: Output channels (``in_channels`` or twice it).
            stride: Stride of the first conv (2 at the start of stages 2 and 3).
        """
        super().__init__()
        self.out_channels = out_channels
        self.stride = stride
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to x of shape (B, C_in, H, W); returns (B, C_out, H / stride, W / stride)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # Out-of-place add: x may be the caller's tensor (torch.func.functional_call, probes).
        return F.relu(out + shortcut_option_a(x, self.out_channels, self.stride))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images (He et al. 2016, sec. 4.2)."""

    def __init__(
        self,
        blocks_per_stage: int,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 16,
        zero_init_residual: bool = False,
    ) -> None:
        """Build the network.

        Args:
            blocks_per_stage: ``n``; depth is ``6n + 2`` (n=3: resnet20, 5: 32, 7: 44, 9: 56, 18: 110).
            num_classes: Outputs of the final linear layer.
            in_channels: Channels of the input images.
            width: ``w``, channels of the first stage; stages have ``(w, 2w, 4w)``.
            zero_init_residual: Start the last BN of every block at weight 0, so that every block is
                the identity at initialisation (Goyal et al. 2017).
        """
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        blocks: list[nn.Module] = []
        channels = width
        for stage, stage_width in enumerate((width, 2 * width, 4 * width)):
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(CifarBasicBlock(channels, stage_width, stride))
                channels = stage_width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(channels, num_classes)
        init_weights_(self)
        if zero_init_residual:
            for block in self.blocks:
                nn.init.zeros_(block.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        """Map images (B, in_channels, H, W) to logits (B, num_classes)."""
        x = F.relu(self.bn1(self.conv1(x)))  # (B, w, H, W)
        x = self.blocks(x)  # (B, 4w, H/4, W/4)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)  # (B, 4w)
        return self.fc(x)
