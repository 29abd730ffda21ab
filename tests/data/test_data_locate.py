"""find_data_dir: search order and the error message when nothing is found."""

from __future__ import annotations

from pathlib import Path

import pytest
from data_testutils import tiny_idx_arrays, write_idx_split

from trajlab.data import DATASETS, DataError, find_data_dir, load_dataset
from trajlab.data import locate as locate_module


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Four candidate places, none holding data yet; cwd is tmp_path; env/ is the search dir the CLI takes
    from $TRAJLAB_DATA."""
    monkeypatch.chdir(tmp_path)
    p = {k: tmp_path / k for k in ("arg", "env", "system")}
    p["cwd"] = tmp_path / "data" / "fashion-mnist"
    monkeypatch.setitem(locate_module.SYSTEM_DIRS, "fashion-mnist", (p["system"],))
    return p


def _fill(directory: Path) -> Path:
    write_idx_split(directory, "train", *tiny_idx_arrays(10, 0), gz=True)
    return directory


def test_search_order(places: dict[str, Path]) -> None:
    env = [places["env"]]
    _fill(places["cwd"])
    assert find_data_dir("fashion-mnist", search_dirs=env) == places["cwd"]
    _fill(places["system"])
    assert find_data_dir("fashion-mnist", search_dirs=env) == places["system"]
    _fill(places["env"] / "fashion-mnist")  # $TRAJLAB_DATA/<name>
    assert find_data_dir("fashion-mnist", search_dirs=env) == places["env"] / "fashion-mnist"
    _fill(places["env"])  # $TRAJLAB_DATA itself comes first
    assert find_data_dir("fashion-mnist", search_dirs=env) == places["env"]
    assert find_data_dir("fashion-mnist") == places["system"]  # the library reads no environment
    _fill(places["arg"])
    assert find_data_dir("fashion-mnist", places["arg"]) == places["arg"]
    assert find_data_dir("fashion-mnist", str(places["arg"])) == places["arg"]


def test_explicit_dir_is_authoritative(places: dict[str, Path]) -> None:
    _fill(places["env"])
    _fill(places["arg"] / "fashion-mnist")
    assert find_data_dir("fashion-mnist", places["arg"]) == places["arg"] / "fashion-mnist"
    with pytest.raises(DataError, match=r"looked in: .*/wrong, .*/wrong/fashion-mnist\. To fix"):
        find_data_dir("fashion-mnist", places["arg"].parent / "wrong")


def test_not_found_lists_every_place_and_what_to_do(places: dict[str, Path]) -> None:
    with pytest.raises(DataError) as info:
        find_data_dir("fashion-mnist", search_dirs=[places["env"]])
    message = str(info.value)
    assert "\n" not in message
    for place in (places["env"], places["env"] / "fashion-mnist", places["system"], places["cwd"]):
        assert str(place) in message
    for hint in ("dataset-fashion-mnist", "--data-dir", "TRAJLAB_DATA", "download=True"):
        assert hint in message
    with pytest.raises(DataError, match="scripts/setup.sh"):
        find_data_dir("mnist")


def test_unknown_names(places: dict[str, Path]) -> None:
    with pytest.raises(DataError, match="unknown dataset 'svhn'; choose one of fashion-mnist, mnist"):
        load_dataset("svhn", "train")
    with pytest.raises(DataError, match="unknown split 'val'"):
        load_dataset("mnist", "val")
    with pytest.raises(DataError, match="no data directory"):
        find_data_dir("synthetic")
    assert DATASETS == ("fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder", "synthetic")
