"""Weight initialisation shared by the models written here."""

from torch import nn


def init_weights_(module: nn.Module) -> None:
    """Initialise ``module`` and its children in place.

    Convolutions get Kaiming-normal weights with ``mode="fan_out"`` for ReLU nets (He et al. 2015),
    the torchvision/ResNet-paper convention, so the variance of the backward signal is preserved;
    batch norms start as the identity (weight 1, bias 0); linear layers keep PyTorch's default
    (Kaiming-uniform with ``a=sqrt(5)``), which is what torchvision's ResNets use for the classifier.

    Args:
        module: The model to initialise. Draws from the global torch RNG, so the result is
            deterministic given ``torch.manual_seed``.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
