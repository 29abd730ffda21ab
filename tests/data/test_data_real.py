"""The real Fashion-MNIST (Debian package) and MNIST (./data/mnist from scripts/setup.sh), when present."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trajlab.data import channel_stats, load_dataset
from trajlab.data.idx import has_idx

FASHION = Path("/usr/share/datasets/fashion-mnist")
MNIST = Path(__file__).resolve().parents[2] / "data" / "mnist"


@pytest.mark.skipif(
    not has_idx(FASHION), reason=f"Fashion-MNIST not installed at {FASHION} (dataset-fashion-mnist)"
)
def test_real_fashion_mnist() -> None:
    train = load_dataset("fashion-mnist", "train")  # found through the search path
    test = load_dataset("fashion-mnist", "test", FASHION, pad_to=32)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 32, 32)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    mean, std = channel_stats(train.images)
    assert mean[0] == pytest.approx(0.2860, abs=5e-4) and std[0] == pytest.approx(0.3530, abs=5e-4)
    assert train.mean == (0.2860,)


@pytest.mark.skipif(
    not has_idx(MNIST), reason=f"MNIST not found at {MNIST} (run scripts/setup.sh to fetch it)"
)
def test_real_mnist() -> None:
    train = load_dataset("mnist", "train", MNIST)
    test = load_dataset("mnist", "test", MNIST)
    assert train.images.shape == (60000, 1, 28, 28) and len(test) == 10000
    assert torch.bincount(train.labels)[:2].tolist() == [5923, 6742]
    assert torch.bincount(test.labels)[:2].tolist() == [980, 1135]
    assert channel_stats(test.images)[0][0] == pytest.approx(0.1325, abs=2e-3)
