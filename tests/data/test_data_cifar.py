"""CIFAR-10/100 python and binary formats, the restricted unpickler, and archive extraction."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from data_testutils import write_cifar_binary, write_cifar_python

from trajlab.data import DataError, load_dataset
from trajlab.data.cifar import RestrictedUnpickler


def _check(ds, data: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (len(data), 3, 32, 32)
    # Row layout: 1024 red, 1024 green, 1024 blue values, each 32 rows of 32.
    assert torch.equal(ds.images, torch.from_numpy(data.reshape(-1, 3, 32, 32)))
    assert int(ds.images[0, 1, 0, 5]) == int(data[0, 1024 + 5])
    assert torch.equal(ds.labels, torch.from_numpy(labels.astype(np.int64)))
    assert ds.num_classes == num_classes


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_python_version(tmp_path: Path, name: str, protocol: int) -> None:
    truth = write_cifar_python(tmp_path, name, protocol=protocol)
    classes = 10 if name == "cifar10" else 100
    for split in ("train", "test"):
        ds = load_dataset(name, split, tmp_path)
        _check(ds, *truth[split], classes)
    assert len(load_dataset(name, "train", tmp_path)) == (20 if name == "cifar10" else 6)
    assert ds.mean == ((0.4914, 0.4822, 0.4465) if name == "cifar10" else (0.5071, 0.4865, 0.4409))


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_binary_version(tmp_path: Path, name: str) -> None:
    truth = write_cifar_binary(tmp_path, name)
    classes = 10 if name == "cifar10" else 100
    for split in ("train", "test"):
        _check(load_dataset(name, split, tmp_path), *truth[split], classes)


def test_binary_wrong_size_names_the_file(tmp_path: Path) -> None:
    write_cifar_binary(tmp_path, "cifar10")
    path = tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DataError, match=rf"{path}: .* not a multiple of the CIFAR-10 record size 3073"):
        load_dataset("cifar10", "train", tmp_path)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_before_it_runs(tmp_path: Path) -> None:
    write_cifar_python(tmp_path, "cifar10")
    marker = tmp_path / "pwned"
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(pickle.dumps({b"data": _Evil(marker), b"labels": [1]}, protocol=2))
    refused = rf"{path}: not a CIFAR python batch \(refusing to load global .*system"
    with pytest.raises(DataError, match=refused):
        load_dataset("cifar10", "train", tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        pickle.dumps(io.BytesIO(b"x")),  # an allowed-looking object from a module we refuse
        pickle.dumps(eval),  # builtins.eval
    ],
)
def test_unpickler_refuses_other_globals(payload: bytes) -> None:
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global"):
        RestrictedUnpickler(io.BytesIO(payload), encoding="bytes").load()


def test_not_cifar_files(tmp_path: Path) -> None:
    write_cifar_python(tmp_path, "cifar10")
    folder = tmp_path / "cifar-10-batches-py"
    path = folder / "data_batch_1"
    path.write_bytes(pickle.dumps({b"images": np.zeros((2, 3072), np.uint8)}, protocol=2))
    with pytest.raises(DataError, match=rf"{path}: not a CIFAR python batch \(keys \['images'\]"):
        load_dataset("cifar10", "train", tmp_path)
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, protocol=2))
    with pytest.raises(DataError, match=rf"{path}: CIFAR data must be uint8 \[n, 3072\]"):
        load_dataset("cifar10", "train", tmp_path)
    path.write_bytes(b"this is not a pickle at all")
    with pytest.raises(DataError, match=rf"{path}: not a CIFAR python batch"):
        load_dataset("cifar10", "train", tmp_path)
    # CIFAR-10 files read as CIFAR-100: no fine_labels key.
    (tmp_path / "cifar-100-python").mkdir()
    (tmp_path / "cifar-100-python" / "train").write_bytes((folder / "data_batch_2").read_bytes())
    with pytest.raises(DataError, match="need 'data' and 'fine_labels'"):
        load_dataset("cifar100", "train", tmp_path)


def _tar_of(folder: Path, archive: Path, extra: tuple[str, bytes] | None = None) -> None:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
        if extra is not None:
            info = tarfile.TarInfo(extra[0])
            info.size = len(extra[1])
            tar.addfile(info, io.BytesIO(extra[1]))


def test_archive_is_extracted(tmp_path: Path) -> None:
    src, data = tmp_path / "src", tmp_path / "data"
    truth = write_cifar_python(src, "cifar10")
    data.mkdir()
    _tar_of(src / "cifar-10-batches-py", data / "cifar-10-python.tar.gz")
    _check(load_dataset("cifar10", "test", data), *truth["test"], 10)
    assert (data / "cifar-10-batches-py" / "test_batch").is_file()


def test_archive_with_path_traversal_is_refused(tmp_path: Path) -> None:
    src, data = tmp_path / "src", tmp_path / "data"
    write_cifar_python(src, "cifar10")
    data.mkdir()
    _tar_of(src / "cifar-10-batches-py", data / "cifar-10-python.tar.gz", ("../escaped.txt", b"boom"))
    with pytest.raises(DataError, match="unsafe archive member '../escaped.txt'"):
        load_dataset("cifar10", "train", data)
    assert not (tmp_path / "escaped.txt").exists()
    assert not (data / "cifar-10-batches-py").exists()
