"""Writers for tiny datasets in the real on-disk formats (shared by the trajlab.data tests)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from trajlab.data.idx import IMAGES_MAGIC, LABELS_MAGIC


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """An unsigned-byte idx file: big-endian magic, one big-endian int32 per dimension, then the data."""
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx_split(
    directory: Path, split: str, images: np.ndarray, labels: np.ndarray, *, gz: bool, dotted: bool = False
) -> None:
    """Writes ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` (or the ``.idx3-ubyte`` style)."""
    directory.mkdir(parents=True, exist_ok=True)
    prefix = "train" if split == "train" else "t10k"
    sep = "." if dotted else "-"
    for kind, array, magic in (("images", images, IMAGES_MAGIC), ("labels", labels, LABELS_MAGIC)):
        dims = 3 if kind == "images" else 1
        name = f"{prefix}-{kind}{sep}idx{dims}-ubyte" + (".gz" if gz else "")
        raw = idx_bytes(array, magic)
        (directory / name).write_bytes(gzip.compress(raw) if gz else raw)


def tiny_idx_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [n, 28, 28] images and [n] labels in 0..9."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), (np.arange(n) % 10).astype(np.uint8)


def cifar_arrays(n: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [n, 3072] rows (channel-major 3x32x32) and labels in [0, num_classes)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, num_classes, n)


def write_cifar_python(directory: Path, name: str, seed: int = 0, protocol: int = 2) -> dict[str, tuple]:
    """Writes ``cifar-10-batches-py`` (5 train batches of 4 + a test batch of 3) or ``cifar-100-python``
    (train 6, test 3) with the real dict structure; returns the arrays per split."""
    import pickle

    out: dict[str, tuple] = {}
    if name == "cifar10":
        folder = directory / "cifar-10-batches-py"
        files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
        sizes, classes = {"train": 4, "test": 3}, 10
    else:
        folder = directory / "cifar-100-python"
        files, sizes, classes = {"train": ["train"], "test": ["test"]}, {"train": 6, "test": 3}, 100
    folder.mkdir(parents=True, exist_ok=True)
    for split, names in files.items():
        datas, labels = [], []
        for i, fname in enumerate(names):
            data, lab = cifar_arrays(sizes[split], classes, seed + 17 * i + (100 if split == "test" else 0))
            names_b = [b"x.png"] * len(data)
            batch = {b"batch_label": f"batch {i}".encode(), b"data": data, b"filenames": names_b}
            if name == "cifar10":
                batch[b"labels"] = [int(v) for v in lab]
            else:
                batch[b"fine_labels"] = [int(v) for v in lab]
                batch[b"coarse_labels"] = [int(v) // 5 for v in lab]
            (folder / fname).write_bytes(pickle.dumps(batch, protocol=protocol))
            datas.append(data)
            labels.append(lab)
        out[split] = (np.concatenate(datas), np.concatenate(labels))
    return out


def write_cifar_binary(directory: Path, name: str, seed: int = 0) -> dict[str, tuple]:
    """Writes ``cifar-10-batches-bin/*.bin`` (label byte + 3072) or ``cifar-100-binary/*.bin``
    (coarse byte, fine byte + 3072); returns the arrays (fine labels) per split."""
    out: dict[str, tuple] = {}
    if name == "cifar10":
        folder = directory / "cifar-10-batches-bin"
        files = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
        classes = 10
    else:
        folder = directory / "cifar-100-binary"
        files, classes = {"train": ["train.bin"], "test": ["test.bin"]}, 100
    folder.mkdir(parents=True, exist_ok=True)
    for split, names in files.items():
        datas, labels = [], []
        for i, fname in enumerate(names):
            data, lab = cifar_arrays(3, classes, seed + 31 * i + (100 if split == "test" else 0))
            head = lab[:, None] if name == "cifar10" else np.stack([lab // 5, lab], axis=1)
            (folder / fname).write_bytes(np.concatenate([head.astype(np.uint8), data], axis=1).tobytes())
            datas.append(data)
            labels.append(lab)
        out[split] = (np.concatenate(datas), np.concatenate(labels))
    return out
