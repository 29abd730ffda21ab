"""The in-memory dataset container, per-channel statistics, padding and class-balanced subsets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from trajlab.data.errors import DataError

# Published per-channel mean/std of x/255 over each dataset's *unpadded* train split. They are kept
# unchanged when images are zero-padded (pad_to), so a padded and an unpadded run normalise the real
# pixels identically (the zero border then maps to -mean/std rather than to 0).
KNOWN_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


@dataclass(frozen=True, eq=False)  # eq=False: tensor fields have no single truth value
class ImageDataset:
    """A labelled image dataset held in memory as uint8 tensors.

    Attributes:
        images: uint8 ``[N, C, H, W]``, contiguous, on the CPU.
        labels: int64 ``[N]`` with values in ``[0, num_classes)``.
        num_classes: Number of classes.
        name: ``"<dataset>/<split>"``, e.g. ``"fashion-mnist/train"``.
        mean: Per-channel mean of ``images / 255`` over the train split (normalisation constant).
        std: Per-channel standard deviation of ``images / 255`` over the train split.
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        x, y = self.images, self.labels
        if x.dtype != torch.uint8 or x.dim() != 4 or x.device.type != "cpu" or not x.is_contiguous():
            raise DataError(
                f"{self.name}: images must be a contiguous CPU uint8 tensor [N, C, H, W], got "
                f"{x.dtype} {tuple(x.shape)} on {x.device}; convert with .to(torch.uint8).contiguous()"
            )
        if y.dtype != torch.int64 or y.shape != (x.shape[0],):
            raise DataError(
                f"{self.name}: labels must be int64 [N={x.shape[0]}], got {y.dtype} {tuple(y.shape)}"
            )
        if self.num_classes < 1:
            raise DataError(f"{self.name}: num_classes must be >= 1, got {self.num_classes}")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise DataError(
                f"{self.name}: labels must lie in [0, {self.num_classes}), "
                f"got [{int(y.min())}, {int(y.max())}]"
            )
        channels = x.shape[1]
        if len(self.mean) != channels or len(self.std) != channels or min(self.std, default=1.0) <= 0:
            raise DataError(
                f"{self.name}: mean/std need {channels} entries with std > 0, got {self.mean}, {self.std}"
            )

    def __len__(self) -> int:
        return self.images.shape[0]


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of ``images / 255``.

    Args:
        images: uint8 ``[N, C, H, W]``.

    Returns:
        ``(mean, std)``, each a tuple of C floats (population std, accumulated in float64).
    """
    channels = images.shape[1]
    mean = torch.zeros(channels, dtype=torch.float64)
    sq = torch.zeros(channels, dtype=torch.float64)
    count = images.shape[0] * images.shape[2] * images.shape[3]
    # Chunks keep the float64 temporary small for large datasets.
    for chunk in images.split(4096):
        xf = chunk.to(torch.float64).div_(255.0)
        mean += xf.sum(dim=(0, 2, 3))
        sq += xf.square_().sum(dim=(0, 2, 3))
    if count == 0:
        raise DataError("cannot compute mean/std of an empty dataset; check the split directory")
    mean /= count
    var = (sq / count - mean.square()).clamp_min(0.0)
    # A constant channel would give std 0 and divide by zero later; 1.0 leaves it merely centred.
    std = torch.where(var > 0, var.sqrt(), torch.ones_like(var))
    return tuple(mean.tolist()), tuple(std.tolist())


def pad_images(images: torch.Tensor, pad_to: int, name: str) -> torch.Tensor:
    """Zero-pads ``[N, C, H, W]`` images to ``[N, C, pad_to, pad_to]`` (centred; odd extra on bottom/right).

    Args:
        images: uint8 ``[N, C, H, W]``.
        pad_to: Target side length, at least ``max(H, W)``; e.g. 32 for 28x28 gives 2 px on each side.
        name: Dataset name for the error message.

    Returns:
        A new contiguous uint8 tensor, or ``images`` itself when it already has that size.
    """
    h, w = images.shape[-2:]
    if pad_to < max(h, w):
        raise DataError(
            f"{name}: pad_to={pad_to} is smaller than the images ({h}x{w}); use pad_to >= {max(h, w)}"
        )
    if (h, w) == (pad_to, pad_to):
        return images
    top, left = (pad_to - h) // 2, (pad_to - w) // 2
    out = images.new_zeros(images.shape[0], images.shape[1], pad_to, pad_to)
    out[:, :, top : top + h, left : left + w] = images
    return out


def subset(ds: ImageDataset, n: int, seed: int = 0) -> ImageDataset:
    """Deterministic, class-balanced subset of ``n`` samples.

    Samples are drawn round-robin over classes in a seeded random order, so every class gets
    ``n // num_classes`` or one more (a class with too few samples gives its share to the others).
    The chosen samples keep their original order. Mean/std are kept (they describe the train split).

    Args:
        ds: The dataset.
        n: Number of samples, ``1 <= n <= len(ds)``.
        seed: Seed of the random order.

    Returns:
        A new ``ImageDataset`` named ``"<name>/subset-<n>-seed<seed>"``.

    Raises:
        DataError: If ``n`` is out of range.
    """
    total = len(ds)
    if not 1 <= n <= total:
        raise DataError(f"{ds.name}: subset size must be in [1, {total}], got {n}; lower n")
    perm = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    labels_p = ds.labels[perm]
    # rank_p[i] = how many samples of the same class come before position i of the permutation.
    order = torch.sort(labels_p, stable=True).indices
    counts = torch.bincount(labels_p, minlength=ds.num_classes)
    starts = torch.cumsum(counts, 0) - counts
    rank_p = torch.empty_like(perm)
    rank_p[order] = torch.arange(total) - starts[labels_p[order]]
    # Sorting by (rank within class, position) takes one sample of each class per round.
    key = rank_p * total + torch.arange(total)
    chosen = perm[torch.argsort(key)[:n]].sort().values
    return dataclasses.replace(
        ds,
        images=ds.images[chosen].contiguous(),
        labels=ds.labels[chosen].contiguous(),
        name=f"{ds.name}/subset-{n}-seed{seed}",
    )
