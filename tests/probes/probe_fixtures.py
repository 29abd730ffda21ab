"""Models and criteria the probe tests share (imported by name; fixtures live in conftest.py)."""

from __future__ import annotations

import torch
from torch import nn

from trajlab.objective import supervised


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # L = mean_i (w.x_i + b - y_i)^2 / 2: exactly quadratic in (w, b), H = [x 1]^T [x 1] / n.
    return 0.5 * ((out.squeeze(-1) - y) ** 2).mean()


# A custom criterion is not guessed to be one (only nn losses and torch.nn.functional are): wrap it.
MSE = supervised(mse)


class TinyCNN(nn.Module):
    """Conv-BN-tanh-pool-linear: BatchNorm exercises the BN modes, tanh keeps the Hessian smooth."""

    def __init__(self, act: type[nn.Module] = nn.Tanh) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = act()
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.avg_pool2d(self.act(self.bn(self.conv(x))), 2)  # [n, 4, 4, 4]
        return self.fc(self.drop(h.flatten(1)))
