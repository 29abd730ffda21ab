"""Shared fixtures: a tiny BN network, a seeded weight trajectory and an in-memory snapshot store."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from trajlab.averaging import EMA, SWA, Kernel, MultiPoint, PowerEMA, TwoPoint


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def window_kernel(steps: np.ndarray, at_step: int) -> np.ndarray:
    # Linearly rising weights over the last 4 steps (a picklable, windowed kernel).
    lag = at_step - steps
    return np.where(lag <= 4, 5.0 - lag, 0.0)


def all_rules() -> list:
    return [
        EMA(0.8),
        EMA(half_life_steps=3.0, warmup=True),
        EMA(0.9, bias_correction=True),
        EMA(0.7, warmup=True, bias_correction=True),
        SWA(),
        SWA(start_step=4),
        SWA(window_steps=4),
        TwoPoint(4),
        MultiPoint(2, 3),
        PowerEMA(2.0),
        Kernel(window_kernel, window_steps=4),
    ]


def sgd_trajectory(model: nn.Module, steps: int, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """Train ``model`` in place for ``steps`` SGD steps; return the state_dicts theta_0..theta_steps."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    states = [{k: v.clone() for k, v in model.state_dict().items()}]
    for _ in range(steps):
        x = torch.randn(8, 4, generator=gen)
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    return states


class FakeStore:
    """In-memory ``TrajectoryStore``: counts loads so tests can check streaming."""

    def __init__(self, states: dict[int, dict[str, torch.Tensor]]) -> None:
        self._states = states
        self.loads: list[int] = []

    def steps(self) -> list[int]:
        return sorted(self._states)

    def load(self, step, device=None, dtype=None):
        self.loads.append(step)
        return {k: v.clone().to(device=device or v.device) for k, v in self._states[step].items()}
