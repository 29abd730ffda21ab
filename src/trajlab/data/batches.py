"""Batched augmentation, normalisation and batch assembly on in-memory uint8 tensors.

Reproducibility contract: the augmentation of a batch is drawn for the whole *global* batch from
``torch.Generator().manual_seed(aug_seed)`` on the CPU, and applied with exact integer indexing, so
rows ``[a:b]`` of the augmented global batch are bit-identical to augmenting only those rows with the
matching slice of the draws (what a DDP rank does), on any device.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from trajlab.data.dataset import ImageDataset
from trajlab.data.errors import DataError


class AugmentDraws(NamedTuple):
    """The random choices of one augmented batch.

    Attributes:
        offsets: int64 ``[B, 2]``: (top, left) of each crop in the padded image, in ``[0, 2 * padding]``.
        flips: bool ``[B]``: mirror horizontally after cropping.
    """

    offsets: torch.Tensor
    flips: torch.Tensor

    def select(self, rows: slice) -> AugmentDraws:
        """The draws of rows ``rows`` of the batch."""
        return AugmentDraws(self.offsets[rows], self.flips[rows])


def draw_augmentation(
    batch_size: int, seed: int, *, crop_padding: int = 4, flip: bool = True
) -> AugmentDraws:
    """Draws crop offsets, then flips, for a batch from ``torch.Generator().manual_seed(seed)``."""
    if crop_padding < 0:
        raise DataError(f"crop_padding must be >= 0, got {crop_padding}")
    g = torch.Generator().manual_seed(seed)
    offsets = torch.randint(0, 2 * crop_padding + 1, (batch_size, 2), generator=g)
    flips = torch.rand(batch_size, generator=g) < 0.5
    if not flip:
        flips = torch.zeros_like(flips)
    return AugmentDraws(offsets, flips)


def apply_augmentation(images: torch.Tensor, draws: AugmentDraws, crop_padding: int = 4) -> torch.Tensor:
    """Random crop with zero padding, then horizontal flip, as one gather (no per-image loop).

    ``out[b, c, i, j] = pad(images)[b, c, top_b + i, left_b + (W - 1 - j if flip_b else j)]``.

    Args:
        images: uint8 ``[B, C, H, W]`` on any device.
        draws: ``AugmentDraws`` of length B.
        crop_padding: Zero padding p on each side; offsets lie in ``[0, 2p]``.

    Returns:
        uint8 ``[B, C, H, W]`` on the device of ``images``.
    """
    b, c, h, w = images.shape
    p = crop_padding
    padded = F.pad(images, (p, p, p, p)) if p else images  # [B, C, H + 2p, W + 2p]
    wp = w + 2 * p
    dev = images.device
    offsets, flips = draws.offsets.to(dev), draws.flips.to(dev)
    ar_h, ar_w = torch.arange(h, device=dev), torch.arange(w, device=dev)
    rows = offsets[:, :1] + ar_h  # [B, H]
    cols = torch.where(flips[:, None], w - 1 - ar_w, ar_w) + offsets[:, 1:]  # [B, W]
    flat = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return padded.reshape(b, c, -1).gather(2, flat).view(b, c, h, w)


def augment(images: torch.Tensor, seed: int, *, crop_padding: int = 4, flip: bool = True) -> torch.Tensor:
    """Random crop (zero padding ``crop_padding``) and horizontal flip of a batch. Pure.

    Args:
        images: uint8 ``[B, C, H, W]``.
        seed: Seed of this batch's draws (e.g. ``BatchSampler.aug_seed(step)``).
        crop_padding: Zero padding on each side before the random ``H x W`` crop.
        flip: Flip each image horizontally with probability 1/2.

    Returns:
        uint8 ``[B, C, H, W]``.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise DataError(f"augment needs uint8 [B, C, H, W], got {images.dtype} {tuple(images.shape)}")
    draws = draw_augmentation(images.shape[0], seed, crop_padding=crop_padding, flip=flip)
    return apply_augmentation(images, draws, crop_padding)


def normalize(
    images: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    *,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(images / 255 - mean) / std`` per channel, computed as ``images * a + b`` (equal up to rounding).

    Args:
        images: uint8 ``[B, C, H, W]``.
        mean: C per-channel means of ``images / 255``.
        std: C per-channel standard deviations.
        dtype: Output floating dtype (arithmetic in float32, or float64 when asked for).

    Returns:
        ``dtype`` ``[B, C, H, W]`` on the device of ``images``.
    """
    work = torch.float64 if dtype == torch.float64 else torch.float32
    shape = (1, -1, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=torch.float64)
    std_t = torch.as_tensor(std, dtype=torch.float64)
    scale = (1.0 / (255.0 * std_t)).to(device=images.device, dtype=work).view(shape)
    shift = (-mean_t / std_t).to(device=images.device, dtype=work).view(shape)
    return images.to(work).mul_(scale).add_(shift).to(dtype)


def _finish(x: torch.Tensor, ds: ImageDataset, channels_last: bool) -> torch.Tensor:
    x = normalize(x, ds.mean, ds.std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def make_batch(
    ds: ImageDataset,
    indices: torch.Tensor,
    *,
    aug_seed: int | None,
    crop_padding: int = 4,
    flip: bool = True,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
    rows: slice | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Builds a (normalised, optionally augmented) batch: gather -> device -> augment -> normalise.

    uint8 images travel to the device (4x less than float) and are augmented there; the draws come
    from the CPU generator, so the result is the same on every device.

    Args:
        ds: The dataset.
        indices: int64 ``[B]`` indices of the *global* batch (e.g. ``BatchSampler.indices(step)``).
        aug_seed: Seed of the augmentation draws for the global batch; None for no augmentation.
        crop_padding: Zero padding of the random crop.
        flip: Random horizontal flips.
        device: Target device.
        channels_last: Return ``x`` in ``torch.channels_last`` memory format.
        rows: Build only these rows of the global batch (a DDP rank's ``shard_rows(...)``); the result
            is bit-identical to ``make_batch(...)[0][rows]`` without building the other rows.

    Returns:
        ``(x, y)``: float32 ``[b, C, H, W]`` and int64 ``[b]`` on ``device`` (``b = len(indices[rows])``).
    """
    if indices.dtype not in (torch.int64, torch.int32) or indices.dim() != 1:
        raise DataError(f"indices must be a 1-D integer tensor, got {indices.dtype} {tuple(indices.shape)}")
    selected = indices if rows is None else indices[rows]
    if len(selected) and (int(selected.min()) < 0 or int(selected.max()) >= len(ds)):
        raise DataError(f"{ds.name}: batch indices must lie in [0, {len(ds)}), got a batch outside it")
    selected = selected.to("cpu", torch.int64)
    device = torch.device(device)
    x = ds.images.index_select(0, selected).to(device, non_blocking=True)  # uint8 [b, C, H, W]
    y = ds.labels.index_select(0, selected).to(device, non_blocking=True)
    if aug_seed is not None:
        draws = draw_augmentation(len(indices), aug_seed, crop_padding=crop_padding, flip=flip)
        x = apply_augmentation(x, draws if rows is None else draws.select(rows), crop_padding)
    return _finish(x, ds, channels_last), y


def iterate_eval(
    ds: ImageDataset,
    batch_size: int,
    *,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yields the whole dataset in order, without augmentation; the last batch may be shorter.

    Args:
        ds: The dataset.
        batch_size: Samples per batch.
        device: Target device.
        channels_last: Yield ``x`` in ``torch.channels_last`` memory format.

    Yields:
        ``(x, y)``: float32 ``[b, C, H, W]`` and int64 ``[b]`` on ``device``.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    for start in range(0, len(ds), batch_size):
        x = ds.images[start : start + batch_size].to(device, non_blocking=True)
        y = ds.labels[start : start + batch_size].to(device, non_blocking=True)
        yield _finish(x, ds, channels_last), y
