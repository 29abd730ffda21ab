"""``load_dataset``: one entry point for every supported dataset and format."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from trajlab.data import cifar, idx, imagefolder
from trajlab.data import synthetic as synth
from trajlab.data.dataset import KNOWN_STATS, ImageDataset, channel_stats, pad_images
from trajlab.data.errors import DataError
from trajlab.data.locate import check_name, find_data_dir

logger = logging.getLogger(__name__)

SPLITS = ("train", "test")


def load_dataset(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    *,
    pad_to: int | None = None,
    download: bool = False,
    image_size: int | None = None,
    synthetic: dict | None = None,
    search_dirs: Sequence[str | os.PathLike] = (),
) -> ImageDataset:
    """Loads a dataset split into memory.

    Args:
        name: One of ``DATASETS``.
        split: ``"train"`` or ``"test"`` (an image folder's ``test`` falls back to ``val/``).
        data_dir: Where the files are; see ``find_data_dir`` for the search when None.
        pad_to: Zero-pad images to ``pad_to x pad_to`` (e.g. 32 for 28x28 MNIST, 2 px each side, so
            CIFAR ResNets apply). ``mean``/``std`` stay those of the unpadded images.
        download: Fetch missing MNIST / Fashion-MNIST files from the official mirrors.
        image_size: Side length for ``imagefolder`` (default 32); images are resized (shorter side)
            and centre-cropped.
        synthetic: Options of the ``synthetic`` task (see ``SyntheticSpec``).
        search_dirs: Further directories to look in when ``data_dir`` is None (before the system location).

    Returns:
        The split as an ``ImageDataset``; ``mean``/``std`` are the published constants for
        (fashion-)mnist and cifar, and are computed on the train split otherwise.

    Raises:
        DataError: For any missing, corrupt or inconsistent input.
    """
    check_name(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    if synthetic is not None and name != "synthetic":
        raise DataError(f"synthetic options were given for dataset {name!r}; drop them or use 'synthetic'")
    if image_size is not None and name != "imagefolder":
        raise DataError(f"image_size applies to 'imagefolder' only; use pad_to for {name!r}")
    if download and name not in ("fashion-mnist", "mnist"):
        raise DataError(
            f"download=True supports fashion-mnist and mnist only; put the {name} files in a data dir"
        )

    images, labels, num_classes, stats, where = _read_split(
        name, split, data_dir, download, image_size, synthetic, tuple(search_dirs)
    )
    if pad_to is not None:
        images = pad_images(images, pad_to, f"{name}/{split}")
    ds = ImageDataset(
        images=images.contiguous(),
        labels=labels.to(torch.int64),
        num_classes=num_classes,
        name=f"{name}/{split}",
        mean=tuple(float(m) for m in stats[0]),
        std=tuple(float(s) for s in stats[1]),
    )
    logger.info("loaded %s: %s uint8 from %s", ds.name, tuple(ds.images.shape), where)
    return ds


def _idx_directory(
    name: str, data_dir: str | os.PathLike | None, split: str, download: bool, search_dirs: tuple
) -> Path:
    if not download:
        return find_data_dir(name, data_dir, search_dirs)
    try:
        directory = find_data_dir(name, data_dir, search_dirs)
    except DataError:
        # Download target: the explicit dir, else the first search dir's <name>, else ./data/<name>.
        if data_dir is not None:
            directory = Path(data_dir).expanduser()
        elif search_dirs:
            directory = Path(search_dirs[0]).expanduser() / name
        else:
            directory = Path.cwd() / "data" / name
    idx.download_idx(name, directory, "train")
    if split != "train":
        idx.download_idx(name, directory, split)
    return directory


def _read_split(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None,
    download: bool,
    image_size: int | None,
    synthetic: dict | None,
    search_dirs: tuple = (),
) -> tuple[torch.Tensor, torch.Tensor, int, tuple, Path | str]:
    # Returns (uint8 [N, C, H, W], int64 [N], num_classes, (mean, std), where the data came from).
    stats = KNOWN_STATS.get(name)
    where = "memory"
    if name == "synthetic":
        spec = synth.SyntheticSpec.from_dict(synthetic)
        images, labels = synth.make_synthetic(spec, split)
        num_classes = spec.num_classes
        train_images = images if split == "train" else synth.make_synthetic(spec, "train")[0]
        stats = channel_stats(train_images)
    elif name in ("fashion-mnist", "mnist"):
        directory = _idx_directory(name, data_dir, split, download, search_dirs)
        images, labels = idx.load_idx_split(directory, split)
        num_classes, where = 10, directory
    elif name in ("cifar10", "cifar100"):
        directory = find_data_dir(name, data_dir, search_dirs)
        images, labels = cifar.load_cifar_split(name, directory, split)
        num_classes, where = (10 if name == "cifar10" else 100), directory
    else:
        root = find_data_dir(name, data_dir, search_dirs)
        size = 32 if image_size is None else image_size
        images, labels, num_classes = imagefolder.load_imagefolder_split(root, split, size)
        reference = imagefolder.stats_images(root, size, images if split == "train" else None)
        if reference is None:
            logger.warning("%s has no train split; mean/std come from the %s split", root, split)
            reference = images
        stats = channel_stats(reference)
        where = root
    return images, labels, num_classes, stats, where
