"""augment against a per-image reference, normalize, make_batch (incl. DDP rows), iterate_eval."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trajlab.data import (
    BatchSampler,
    DataError,
    ImageDataset,
    augment,
    draw_augmentation,
    iterate_eval,
    load_dataset,
    make_batch,
    normalize,
    shard,
    shard_rows,
)


def _reference_augment(images: torch.Tensor, seed: int, crop_padding: int, flip: bool) -> torch.Tensor:
    # The slow obvious version: per image, pad, slice the window, flip.
    draws = draw_augmentation(len(images), seed, crop_padding=crop_padding, flip=flip)
    p, (h, w) = crop_padding, images.shape[-2:]
    out = []
    for img, (top, left), mirror in zip(images, draws.offsets.tolist(), draws.flips.tolist()):
        crop = F.pad(img, (p, p, p, p))[:, top : top + h, left : left + w]
        out.append(crop.flip(-1) if mirror else crop)
    return torch.stack(out)


@pytest.mark.parametrize(
    ("channels", "h", "w", "p", "flip"), [(1, 8, 8, 4, True), (3, 5, 7, 2, True), (2, 6, 6, 0, False)]
)
def test_augment_matches_reference(channels: int, h: int, w: int, p: int, flip: bool) -> None:
    images = torch.randint(
        0, 256, (33, channels, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    out = augment(images, seed=123, crop_padding=p, flip=flip)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert torch.equal(out, _reference_augment(images, 123, p, flip))
    assert torch.equal(out, augment(images, seed=123, crop_padding=p, flip=flip))  # pure
    if p == 0 and not flip:
        assert torch.equal(out, images)


def test_augment_draws_cover_all_offsets_and_flips() -> None:
    draws = draw_augmentation(4096, seed=1, crop_padding=4)
    assert set(draws.offsets.flatten().tolist()) == set(range(9))
    assert 0.45 < draws.flips.float().mean() < 0.55
    assert not draw_augmentation(16, seed=1, flip=False).flips.any()


def test_augment_rejects_float_images() -> None:
    with pytest.raises(DataError, match="augment needs uint8"):
        augment(torch.zeros(2, 1, 4, 4), seed=0)


def test_normalize_formula() -> None:
    images = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    out = normalize(images, mean, std)
    mean_t, std_t = (torch.tensor(v, dtype=torch.float64).view(1, 3, 1, 1) for v in (mean, std))
    expected = (images.double() / 255 - mean_t) / std_t
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        normalize(images, mean, std, dtype=torch.float64), expected, atol=1e-12, rtol=0
    )


@pytest.fixture(scope="module")
def ds() -> ImageDataset:
    return load_dataset("synthetic", "train", synthetic={"n": 64, "channels": 3, "size": 8, "num_classes": 4})


def test_make_batch_equals_gather_augment_normalize(ds: ImageDataset) -> None:
    sampler = BatchSampler(len(ds), 16, seed=9)
    idx, seed = sampler.indices(5), sampler.aug_seed(5)
    x, y = make_batch(ds, idx, aug_seed=seed)
    expected = normalize(augment(ds.images[idx], seed), ds.mean, ds.std)
    assert torch.equal(x, expected) and torch.equal(y, ds.labels[idx])
    x_plain, _ = make_batch(ds, idx, aug_seed=None)
    assert torch.equal(x_plain, normalize(ds.images[idx], ds.mean, ds.std))
    # Rebuilding step 5 later from a fresh sampler gives the same tensors.
    again = BatchSampler(len(ds), 16, seed=9)
    assert torch.equal(make_batch(ds, again.indices(5), aug_seed=again.aug_seed(5))[0], x)


@pytest.mark.parametrize("world_size", [2, 4])
def test_rank_rows_equal_slices_of_the_global_batch(ds: ImageDataset, world_size: int) -> None:
    idx = BatchSampler(len(ds), 16, seed=2).indices(3)
    x_global, y_global = make_batch(ds, idx, aug_seed=77)
    for rank in range(world_size):
        rows = shard_rows(len(idx), rank, world_size)
        x, y = make_batch(ds, idx, aug_seed=77, rows=rows)
        assert torch.equal(x, x_global[rows]) and torch.equal(y, y_global[rows])
        assert torch.equal(y, ds.labels[shard(idx, rank, world_size)])


def test_channels_last_and_errors(ds: ImageDataset) -> None:
    idx = torch.arange(4)
    x, _ = make_batch(ds, idx, aug_seed=1, channels_last=True)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x, make_batch(ds, idx, aug_seed=1)[0])
    with pytest.raises(DataError, match=r"batch indices must lie in \[0, 64\)"):
        make_batch(ds, torch.tensor([0, 64]), aug_seed=None)
    with pytest.raises(DataError, match="indices must be a 1-D integer tensor"):
        make_batch(ds, torch.tensor([0.0]), aug_seed=None)


def test_iterate_eval_in_order(ds: ImageDataset) -> None:
    batches = list(iterate_eval(ds, 24, channels_last=True))
    assert [len(y) for _, y in batches] == [24, 24, 16]
    x = torch.cat([b[0] for b in batches])
    assert torch.equal(x, normalize(ds.images, ds.mean, ds.std))
    assert torch.equal(torch.cat([b[1] for b in batches]), ds.labels)
    assert batches[0][0].is_contiguous(memory_format=torch.channels_last)
