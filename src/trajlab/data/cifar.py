"""CIFAR-10/100 from the python (pickle) or binary versions, and safe extraction of their archives.

The pickles are read through a restricted unpickler: a CIFAR batch is a dict of bytes keys to numpy
arrays, lists, ints and bytes, so the only globals it may name are numpy's array/dtype reconstructors.
Anything else (``os.system``, ``builtins.eval``, ...) is refused before it can run. Besides the
original Python 2 files, batches re-saved by Python 3 (protocol 2: bytes via ``_codecs.encode``;
protocol 5: arrays via ``numpy._core.numeric._frombuffer``) load too.
"""

from __future__ import annotations

import codecs
import logging
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from trajlab.data.errors import DataError

logger = logging.getLogger(__name__)

_PIXELS = 3 * 32 * 32  # one image, channel-major (1024 red, 1024 green, 1024 blue, rows of 32)


def _allowed_globals() -> dict[tuple[str, str], object]:
    try:  # numpy >= 2 moved numpy.core to numpy._core; old pickles still name numpy.core
        from numpy._core import multiarray, numeric
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 writes bytes at protocol 2 as _codecs.encode(str, "latin1") (a re-saved batch);
        # it only converts text to bytes.
        ("_codecs", "encode"): codecs.encode,
    }
    for module in ("numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = multiarray._reconstruct
        # Arrays pickled with protocol 5 (a re-saved batch) rebuild through _frombuffer: harmless,
        # it only wraps a bytes buffer.
        allowed[(f"{module}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy's ndarray/dtype reconstruction globals."""

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> object:
        """Returns the allowed global or refuses with ``pickle.UnpicklingError``."""
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def _load_pickle(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            obj = RestrictedUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise DataError(
            f"{path}: not a CIFAR python batch ({e}); use the official cifar-*-python files"
        ) from e
    except Exception as e:  # any parse failure of a foreign or truncated file
        raise DataError(f"{path}: not a CIFAR python batch ({type(e).__name__}: {e}); re-download it") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a CIFAR python batch (a {type(obj).__name__}, expected a dict)")
    return obj


def _batch_arrays(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _load_pickle(path)
    data, labels = batch.get(b"data"), batch.get(label_key)
    if not isinstance(data, np.ndarray) or labels is None:
        keys = sorted(k.decode(errors="replace") if isinstance(k, bytes) else str(k) for k in batch)
        raise DataError(
            f"{path}: not a CIFAR python batch (keys {keys}, need 'data' and {label_key.decode()!r}); "
            "use the matching cifar-10/cifar-100 files"
        )
    labels = np.asarray(labels)
    if (
        data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != _PIXELS
        or labels.shape != (len(data),)
        or labels.dtype.kind not in "iu"
    ):
        raise DataError(
            f"{path}: CIFAR data must be uint8 [n, {_PIXELS}] with n labels, got {data.dtype} "
            f"{data.shape} and {labels.shape} labels; the file is corrupt, re-download it"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: labels outside [0, {num_classes}); is this CIFAR-{num_classes}?")
    return data, labels


def _binary_arrays(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    # Record: cifar10 = label byte + 3072 pixels; cifar100 = coarse byte, fine byte + 3072 pixels.
    label_bytes = 1 if num_classes == 10 else 2
    record = label_bytes + _PIXELS
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    if raw.size == 0 or raw.size % record:
        raise DataError(
            f"{path}: {raw.size} bytes is not a multiple of the CIFAR-{num_classes} record size {record}; "
            "wrong or truncated file, re-download it"
        )
    rows = raw.reshape(-1, record)
    labels = rows[:, label_bytes - 1]  # the fine label for cifar100
    if labels.max() >= num_classes:
        raise DataError(f"{path}: labels outside [0, {num_classes}); is this CIFAR-{num_classes}?")
    return rows[:, label_bytes:], labels


_LAYOUT = {
    # name: (python dir, binary dir, python files per split, binary files per split, label key)
    "cifar10": (
        "cifar-10-batches-py",
        "cifar-10-batches-bin",
        {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
        {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]},
        b"labels",
    ),
    "cifar100": (
        "cifar-100-python",
        "cifar-100-binary",
        {"train": ["train"], "test": ["test"]},
        {"train": ["train.bin"], "test": ["test.bin"]},
        b"fine_labels",
    ),
}
_ARCHIVES = {
    "cifar10": ("cifar-10-python.tar.gz", "cifar-10-binary.tar.gz"),
    "cifar100": ("cifar-100-python.tar.gz", "cifar-100-binary.tar.gz"),
}


def has_cifar(name: str, directory: Path) -> bool:
    """Whether ``directory`` holds CIFAR ``name`` (extracted folder, the folder itself, or an archive)."""
    py_dir, bin_dir, py_files, bin_files, _ = _LAYOUT[name]
    return (
        (directory / py_dir).is_dir()
        or (directory / bin_dir).is_dir()
        or (directory / py_files["train"][0]).is_file()
        or (directory / bin_files["train"][0]).is_file()
        or any((directory / a).is_file() for a in _ARCHIVES[name])
    )


def extract_archive(archive: Path, directory: Path) -> None:
    """Extracts a CIFAR ``.tar.gz`` into ``directory``, refusing links, devices and paths outside it."""
    root = directory.resolve()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                target = (root / m.name).resolve()
                if not (m.isfile() or m.isdir()) or not target.is_relative_to(root):
                    raise DataError(
                        f"{archive}: unsafe archive member {m.name!r}; not an official CIFAR archive"
                    )
            tar.extractall(root, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{archive}: cannot extract ({e}); re-download it") from e
    logger.info("extracted %s into %s", archive, root)


def load_cifar_split(name: str, directory: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Reads one CIFAR split, extracting a found ``.tar.gz`` first if no extracted folder exists.

    Args:
        name: ``"cifar10"`` or ``"cifar100"`` (fine labels).
        directory: Directory holding the ``cifar-*`` folder (or the folder itself, or the archive).
        split: ``"train"`` or ``"test"``.

    Returns:
        ``(images, labels)``: uint8 ``[N, 3, 32, 32]`` and int64 ``[N]``.
    """
    py_dir, bin_dir, py_files, bin_files, label_key = _LAYOUT[name]
    num_classes = 10 if name == "cifar10" else 100
    if not ((directory / py_dir).is_dir() or (directory / bin_dir).is_dir()):
        for archive in _ARCHIVES[name]:
            if (directory / archive).is_file():
                extract_archive(directory / archive, directory)
                break
    candidates = [
        (directory / py_dir, py_files, True),
        (directory / bin_dir, bin_files, False),
        (directory, py_files, True),
        (directory, bin_files, False),
    ]
    for folder, files, is_pickle in candidates:
        if (folder / files[split][0]).is_file():
            missing = [f for f in files[split] if not (folder / f).is_file()]
            if missing:
                raise DataError(f"{folder}: missing {missing} for {name}/{split}; re-download the dataset")
            parts = [
                _batch_arrays(folder / f, label_key, num_classes)
                if is_pickle
                else _binary_arrays(folder / f, num_classes)
                for f in files[split]
            ]
            data = np.concatenate([p[0] for p in parts])
            labels = np.concatenate([p[1] for p in parts]).astype(np.int64)
            images = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32))
            return images, torch.from_numpy(labels)
    raise DataError(
        f"{directory}: no {py_dir}/ or {bin_dir}/ with the {split} files of {name}; "
        f"put the extracted dataset or {_ARCHIVES[name][0]} there"
    )
