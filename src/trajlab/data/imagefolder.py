"""Image folders ``root/{train,val|test}/<class>/*.png|jpg|...`` loaded with Pillow into uint8 tensors.

The whole split is decoded once and kept in memory at ``image_size x image_size``: N * 3 * S^2 bytes,
e.g. 3.9 GB for 1.28M images at S = 32 but 193 GB at S = 224, so full-resolution ImageNet does not fit;
use a small ``image_size`` (or a subset of classes) for large folders.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from trajlab.data.errors import DataError

if TYPE_CHECKING:  # Pillow is optional and imported lazily
    from PIL.Image import Image as PILImage

logger = logging.getLogger(__name__)

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_SPLIT_DIRS = {"train": ("train",), "test": ("test", "val")}
_STATS_MAX_IMAGES = 5000  # mean/std come from at most this many evenly spaced train images
_WARN_BYTES = 8 << 30


def split_dir(root: Path, split: str) -> Path | None:
    """The directory of ``split`` under ``root`` (``test`` falls back to ``val``), or None."""
    for name in _SPLIT_DIRS[split]:
        if (root / name).is_dir():
            return root / name
    return None


def has_imagefolder(root: Path) -> bool:
    """Whether ``root`` has a ``train/`` directory."""
    return (root / "train").is_dir()


def _classes(root: Path) -> list[str]:
    # Classes come from train/ when it exists so that train and test labels agree.
    base = split_dir(root, "train") or split_dir(root, "test")
    if base is None:
        raise DataError(f"{root}: no train/, test/ or val/ directory; expected root/<split>/<class>/*.png")
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{base}: no class subdirectories; expected {base}/<class>/*.png")
    return classes


def list_images(root: Path, split: str) -> tuple[list[Path], list[int], list[str]]:
    """Image files of a split in a deterministic order (class, then file name).

    Returns:
        ``(paths, labels, classes)``.
    """
    directory = split_dir(root, split)
    if directory is None:
        raise DataError(f"{root}: no {' or '.join(_SPLIT_DIRS[split])}/ directory for split {split!r}")
    classes = _classes(root)
    extra = sorted({p.name for p in directory.iterdir() if p.is_dir()} - set(classes))
    if extra:
        raise DataError(
            f"{directory}: classes {extra} are not in the train split; make the class folders match"
        )
    paths: list[Path] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        folder = directory / cls
        if not folder.is_dir():
            continue
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS and p.is_file())
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise DataError(f"{directory}: no images ({', '.join(EXTENSIONS)}) in any class folder")
    return paths, labels, classes


def _decode(paths: list[Path], image_size: int) -> torch.Tensor:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as e:
        raise DataError("the imagefolder dataset needs Pillow: pip install pillow") from e
    n_bytes = len(paths) * 3 * image_size * image_size
    if n_bytes > _WARN_BYTES:
        logger.warning(
            "imagefolder: %d images at %dpx need %.1f GB in memory", len(paths), image_size, n_bytes / 2**30
        )
    out = torch.empty(len(paths), 3, image_size, image_size, dtype=torch.uint8)
    for i, path in enumerate(paths):  # decoding is per file anyway; this loop runs once at load time
        try:
            with Image.open(path) as img:
                arr = np.array(_resize_center_crop(img.convert("RGB"), image_size))  # writable copy
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise DataError(f"{path}: cannot decode image ({e}); delete or replace the file") from e
        out[i] = torch.from_numpy(arr).permute(2, 0, 1)  # [S, S, 3] -> [3, S, S]
    return out


def _resize_center_crop(img: PILImage, size: int) -> PILImage:
    # Shorter side to `size` (bilinear, antialiased by PIL), then the central size x size crop.
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), resample=2)  # 2 = PIL.Image.BILINEAR
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def load_imagefolder_split(root: Path, split: str, image_size: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Decodes one split.

    Returns:
        ``(images, labels, num_classes)``: uint8 ``[N, 3, S, S]``, int64 ``[N]``, number of classes.
    """
    if image_size < 1:
        raise DataError(f"image_size must be >= 1, got {image_size}")
    paths, labels, classes = list_images(root, split)
    return _decode(paths, image_size), torch.tensor(labels, dtype=torch.int64), len(classes)


def stats_images(root: Path, image_size: int, train_images: torch.Tensor | None) -> torch.Tensor | None:
    """The train images that define mean/std: at most 5000, evenly spaced, the same in both splits.

    Args:
        root: Dataset root.
        image_size: Side length S.
        train_images: The decoded train split when it is at hand (avoids decoding again).

    Returns:
        uint8 ``[M, 3, S, S]``, or None when there is no train split.
    """
    if split_dir(root, "train") is None:
        return None
    paths = list_images(root, "train")[0]
    step = max(1, -(-len(paths) // _STATS_MAX_IMAGES))  # ceil(N / 5000)
    if train_images is not None:
        return train_images[::step]
    return _decode(paths[::step], image_size)
