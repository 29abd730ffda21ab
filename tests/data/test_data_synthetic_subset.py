"""The synthetic task (determinism, learnability) and class-balanced subsets."""

from __future__ import annotations

import pytest
import torch

from trajlab.data import DataError, ImageDataset, channel_stats, load_dataset, subset

OPTS = {"n": 200, "n_test": 100, "num_classes": 4, "channels": 3, "size": 16, "seed": 7}


def test_synthetic_is_deterministic_and_shaped() -> None:
    a = load_dataset("synthetic", "train", synthetic=OPTS)
    b = load_dataset("synthetic", "train", synthetic=OPTS)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.images.shape == (200, 3, 16, 16) and a.num_classes == 4
    assert torch.bincount(a.labels).tolist() == [50] * 4
    other = load_dataset("synthetic", "train", synthetic={**OPTS, "seed": 8})
    assert not torch.equal(a.images, other.images)
    test = load_dataset("synthetic", "test", synthetic=OPTS)
    assert len(test) == 100 and (test.mean, test.std) == (a.mean, a.std)
    assert a.mean == pytest.approx(channel_stats(a.images)[0])


def test_synthetic_is_learnable() -> None:
    # Nearest class mean (estimated on train) classifies the test split far above chance (25%).
    train = load_dataset("synthetic", "train", synthetic=OPTS)
    test = load_dataset("synthetic", "test", synthetic=OPTS)
    x = train.images.flatten(1).float()
    centres = torch.stack([x[train.labels == c].mean(0) for c in range(4)])
    pred = torch.cdist(test.images.flatten(1).float(), centres).argmin(1)
    assert (pred == test.labels).float().mean() > 0.9


def test_synthetic_rejects_unknown_options() -> None:
    with pytest.raises(DataError, match=r"unknown synthetic option\(s\) \['colour'\]"):
        load_dataset("synthetic", "train", synthetic={"colour": 1})
    with pytest.raises(DataError, match="synthetic options were given"):
        load_dataset("mnist", "train", synthetic={"n": 3})


def _toy(labels: list[int], num_classes: int) -> ImageDataset:
    n = len(labels)
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).contiguous()
    return ImageDataset(images, torch.tensor(labels), num_classes, "toy/train", (0.5,), (0.25,))


def test_subset_is_balanced_deterministic_and_ordered() -> None:
    ds = load_dataset("synthetic", "train", synthetic={**OPTS, "n": 400})
    sub = subset(ds, 42, seed=3)
    assert len(sub) == 42
    assert sorted(torch.bincount(sub.labels, minlength=4).tolist()) == [10, 10, 11, 11]
    again = subset(ds, 42, seed=3)
    assert torch.equal(sub.images, again.images) and torch.equal(sub.labels, again.labels)
    assert not torch.equal(subset(ds, 42, seed=4).images, sub.images)
    assert (sub.mean, sub.std, sub.num_classes) == (ds.mean, ds.std, ds.num_classes)


def test_subset_small_class_gives_its_share_to_the_others() -> None:
    ds = _toy([0] * 2 + [1] * 10 + [2] * 10, 3)
    sub = subset(ds, 12, seed=0)
    assert torch.bincount(sub.labels).tolist() == [2, 5, 5]
    # Original order is kept: image i holds the value i.
    values = sub.images.flatten().tolist()
    assert values == sorted(values)
    assert torch.equal(ds.labels[sub.images.flatten().long()], sub.labels)


def test_subset_bounds() -> None:
    ds = _toy([0, 1, 0, 1], 2)
    assert len(subset(ds, 4)) == 4
    for n in (0, 5):
        with pytest.raises(DataError, match=r"subset size must be in \[1, 4\]"):
            subset(ds, n)


def test_dataset_validation() -> None:
    with pytest.raises(DataError, match="images must be a contiguous CPU uint8"):
        ImageDataset(torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.int64), 2, "bad", (0.5,), (0.2,))
    with pytest.raises(DataError, match=r"labels must lie in \[0, 2\)"):
        _toy([0, 2], 2)
    images, labels = torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64)
    with pytest.raises(DataError, match="mean/std need 1 entries"):
        ImageDataset(images, labels, 2, "x", (0.5, 0.5), (1.0, 1.0))
