"""Image folders decoded with Pillow: class order, resize + centre crop, RGB, errors."""

from __future__ import annotations

import builtins
from pathlib import Path

import numpy as np
import pytest
import torch

from trajlab.data import DataError, channel_stats, load_dataset

PIL = pytest.importorskip("PIL", reason="Pillow is not installed; imagefolder loading cannot be tested")
from PIL import Image  # noqa: E402


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """train: 'cat' 2 images, 'ant' 1 (so sorted order differs from creation order); val: 1 per class."""
    root = tmp_path / "folder"
    # Constant colours survive resizing exactly, so the expected pixels are known.
    _write(root / "train" / "cat" / "a.png", np.full((8, 8, 3), (200, 10, 10), np.uint8))
    _write(root / "train" / "cat" / "b.PNG", np.full((8, 8, 3), (210, 20, 20), np.uint8))
    _write(root / "train" / "ant" / "a.jpg", np.full((8, 8, 3), 128, np.uint8))
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    # Grey, non-square: converted to RGB, resized on the shorter side, centre-cropped.
    wide = np.zeros((4, 12), np.uint8)
    wide[:, 4:8] = 255  # white middle third
    _write(root / "val" / "ant" / "wide.png", wide)
    _write(root / "val" / "cat" / "c.png", np.full((8, 8, 3), (200, 10, 10), np.uint8))
    return root


def test_loads_train_split(folder: Path) -> None:
    ds = load_dataset("imagefolder", "train", folder, image_size=4)
    assert ds.images.shape == (3, 3, 4, 4) and ds.images.dtype == torch.uint8
    assert ds.labels.tolist() == [0, 1, 1]  # ant < cat
    assert ds.num_classes == 2 and ds.name == "imagefolder/train"
    assert ds.images[1, :, 0, 0].tolist() == [200, 10, 10]
    assert ds.images[2, :, 0, 0].tolist() == [210, 20, 20]
    assert abs(int(ds.images[0, 0, 0, 0]) - 128) <= 2  # jpeg
    # mean/std are those of the train images.
    assert ds.mean == pytest.approx(channel_stats(ds.images)[0])


def test_test_split_falls_back_to_val_and_uses_train_stats(folder: Path) -> None:
    train = load_dataset("imagefolder", "train", folder, image_size=4)
    test = load_dataset("imagefolder", "test", folder, image_size=4)
    assert test.labels.tolist() == [0, 1]
    assert (test.mean, test.std) == (train.mean, train.std)
    wide = test.images[0]
    # 4x12 -> 4x12 (shorter side already 4) -> centre 4x4 crop = the white middle third, grey as RGB.
    assert torch.equal(wide, torch.full((3, 4, 4), 255, dtype=torch.uint8))


def test_default_image_size_is_32(folder: Path) -> None:
    assert load_dataset("imagefolder", "train", folder).images.shape[-2:] == (32, 32)


def test_errors(folder: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "train" / "dog").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        load_dataset("imagefolder", "train", empty)
    (folder / "val" / "zebra").mkdir()
    with pytest.raises(DataError, match=r"classes \['zebra'\] are not in the train split"):
        load_dataset("imagefolder", "test", folder)
    (folder / "train" / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png: cannot decode image"):
        load_dataset("imagefolder", "train", folder)
    with pytest.raises(DataError, match="image_size applies to 'imagefolder' only"):
        load_dataset("mnist", "train", folder, image_size=8)


def test_missing_pillow_says_what_to_install(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_pil(name, *args, **kwargs):
        if name == "PIL" or name.startswith("PIL."):
            raise ImportError("No module named 'PIL'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pil)
    with pytest.raises(DataError, match="pip install pillow"):
        load_dataset("imagefolder", "train", folder)
