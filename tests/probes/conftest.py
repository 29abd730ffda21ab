"""Shared fixtures: an exact quadratic (linear least squares) and a tiny smooth CNN with BatchNorm."""

from __future__ import annotations

import pytest
import torch
from probe_fixtures import MSE, TinyCNN, mse  # noqa: F401 (re-exported for the fixtures)
from torch import nn


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
