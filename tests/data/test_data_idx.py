"""idx parsing (gz and raw, both naming styles), validation errors, and download from a local server."""

from __future__ import annotations

import functools
import gzip
import http.server
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from data_testutils import idx_bytes, tiny_idx_arrays, write_idx_split

from trajlab.data import DataError, load_dataset
from trajlab.data import idx as idx_module
from trajlab.data.idx import IMAGES_MAGIC, LABELS_MAGIC, download_idx


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("dotted", [True, False])
def test_idx_round_trip(tmp_path: Path, gz: bool, dotted: bool) -> None:
    images, labels = tiny_idx_arrays(12, seed=3)
    write_idx_split(tmp_path, "train", images, labels, gz=gz, dotted=dotted)
    write_idx_split(tmp_path, "test", images[:5], labels[:5], gz=gz, dotted=dotted)
    ds = load_dataset("mnist", "train", tmp_path)
    assert ds.images.shape == (12, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert torch.equal(ds.images[:, 0], torch.from_numpy(images))
    assert torch.equal(ds.labels, torch.from_numpy(labels.astype(np.int64)))
    assert ds.num_classes == 10 and ds.name == "mnist/train"
    assert ds.mean == (0.1307,) and ds.std == (0.3081,)
    test = load_dataset("mnist", "test", tmp_path)
    assert len(test) == 5


def test_pad_to_32_centres_the_image_and_keeps_constants(mnist_dir: Path) -> None:
    plain = load_dataset("fashion-mnist", "train", mnist_dir)
    padded = load_dataset("fashion-mnist", "train", mnist_dir, pad_to=32)
    assert padded.images.shape == (20, 1, 32, 32)
    assert torch.equal(padded.images[:, :, 2:30, 2:30], plain.images)
    border = padded.images.clone()
    border[:, :, 2:30, 2:30] = 0
    assert int(border.sum()) == 0
    assert padded.mean == plain.mean == (0.2860,) and padded.std == (0.3530,)
    with pytest.raises(DataError, match="pad_to=20 is smaller"):
        load_dataset("fashion-mnist", "train", mnist_dir, pad_to=20)


def _corrupt(directory: Path, name: str, raw: bytes) -> Path:
    path = directory / name
    path.write_bytes(raw)
    return path


def test_wrong_magic_names_the_file(mnist_dir: Path) -> None:
    images, _ = tiny_idx_arrays(20, 0)
    # An images file where the labels file should be.
    path = _corrupt(mnist_dir, "train-labels-idx1-ubyte.gz", gzip.compress(idx_bytes(images, IMAGES_MAGIC)))
    with pytest.raises(DataError, match=rf"{path}.*bad idx magic number 2051 \(expected 2049"):
        load_dataset("mnist", "train", mnist_dir)


def test_truncated_raw_and_gz_files(tmp_path: Path) -> None:
    images, labels = tiny_idx_arrays(20, 0)
    write_idx_split(tmp_path, "train", images, labels, gz=False)
    raw = idx_bytes(images, IMAGES_MAGIC)
    path = _corrupt(tmp_path, "train-images-idx3-ubyte", raw[:-100])
    with pytest.raises(DataError, match=rf"{path}: idx file has .* truncated"):
        load_dataset("mnist", "train", tmp_path)
    path.unlink()
    gz_path = _corrupt(tmp_path, "train-images-idx3-ubyte.gz", gzip.compress(raw)[:-50])
    with pytest.raises(DataError, match=rf"{gz_path}: cannot read"):
        load_dataset("mnist", "train", tmp_path)


def test_image_label_count_mismatch(tmp_path: Path) -> None:
    images, labels = tiny_idx_arrays(20, 0)
    write_idx_split(tmp_path, "train", images, labels[:19], gz=True)
    with pytest.raises(DataError, match="20 images but .* 19 labels"):
        load_dataset("mnist", "train", tmp_path)


# --- download, against a local HTTP server on 127.0.0.1 (no network needed) ---------------------


@pytest.fixture
def idx_server(tmp_path: Path):
    """Serves tiny gzip'd idx files (hyphen style) over http://127.0.0.1:<port>/."""
    served = tmp_path / "served"
    write_idx_split(served, "train", *tiny_idx_arrays(30, 4), gz=True)
    write_idx_split(served, "test", *tiny_idx_arrays(10, 5), gz=True)
    (served / "html").mkdir()
    (served / "html" / "train-images-idx3-ubyte.gz").write_bytes(b"<html>rate limited</html>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args, **kwargs: None  # keep pytest output clean
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"  # nothing listens there any more: connection refused


def test_download_from_local_mirror(idx_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The first mirror is down, the second serves: the loader falls through to it.
    monkeypatch.setitem(idx_module.MIRRORS, "fashion-mnist", (_closed_port_url(), idx_server))
    target = tmp_path / "dl"
    ds = load_dataset("fashion-mnist", "test", target, download=True)
    assert len(ds) == 10
    expected = tiny_idx_arrays(10, 5)[0]
    assert torch.equal(ds.images[:, 0], torch.from_numpy(expected))
    names = sorted(p.name for p in target.iterdir())
    assert names == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
    ]  # no leftover temporary files
    # Present files are not fetched again: with every mirror down it still loads.
    monkeypatch.setitem(idx_module.MIRRORS, "fashion-mnist", (_closed_port_url(),))
    assert len(load_dataset("fashion-mnist", "train", target, download=True)) == 30


def test_download_rejects_a_bad_payload_and_keeps_nothing(idx_server: str, tmp_path: Path) -> None:
    target = tmp_path / "dl"
    with pytest.raises(DataError, match="could not download mnist"):
        download_idx("mnist", target, "train", mirrors=(idx_server + "html/",))
    assert list(target.iterdir()) == []


def test_download_without_network_says_so(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no network\?.*copy the files into"):
        download_idx("mnist", tmp_path / "dl", "train", mirrors=(_closed_port_url(),))


def test_no_download_for_cifar(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="download=True supports fashion-mnist and mnist only"):
        load_dataset("cifar10", "train", tmp_path, download=True)


def test_labels_magic_constant() -> None:
    assert (IMAGES_MAGIC, LABELS_MAGIC) == (0x803, 0x801)
