"""Shared fixtures: an exact quadratic (linear least squares) and a tiny smooth CNN with BatchNorm."""

from __future__ import annotations

import pytest
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


@pytest.fixture
def quadratic():
    g = torch.Generator().manual_seed(0)
    model = nn.Linear(5, 1).double()
    x = torch.randn(64, 5, generator=g, dtype=torch.float64)
    y = x @ torch.randn(5, dtype=torch.float64, generator=g) + 0.3 * torch.randn(
        64, dtype=torch.float64, generator=g
    )
    x2 = torch.randn(64, 5, generator=g, dtype=torch.float64)
    return model, (x, y), (x2, x2.sum(1))


@pytest.fixture
def cnn():
    torch.manual_seed(0)
    model = TinyCNN().double()
    x = torch.randn(16, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    x2 = torch.randn(16, 1, 8, 8, dtype=torch.float64)
    y2 = torch.randint(0, 3, (16,))
    # Non-trivial running stats so "running" differs from "batch".
    with torch.no_grad():
        model.train()
        model(x * 2 + 1)
    return model, (x, y), (x2, y2)
