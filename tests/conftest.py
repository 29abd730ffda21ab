"""Shared fixtures: tiny configs on synthetic data that train in well under a second."""

from __future__ import annotations

import os

import pytest
import torch

# Tests are sized for 2 cores; keep torch from oversubscribing when several suites share a machine.
torch.set_num_threads(int(os.environ.get("TRAJLAB_NUM_THREADS", "2")))

TINY = [
    "data.name=synthetic",
    "data.pad_to=0",
    "data.train_subset=0",
    "data.test_subset=0",
    "data.synthetic={n = 256, n_test = 128, num_classes = 4, channels = 1, size = 16, seed = 3}",
    "model.name=resnet20",
    "model.width=4",
    "train.batch_size=32",
    "train.steps=12",
    "train.eval_every_steps=6",
    "train.log_every_steps=3",
    "train.eval_batch_size=64",
    "train.progress=false",
    "optim.lr=0.05",
]


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)
