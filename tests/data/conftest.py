"""Fixtures of the trajlab.data tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from data_testutils import tiny_idx_arrays, write_idx_split


@pytest.fixture(autouse=True)
def _one_thread():
    # The CI machine has 2 cores shared with other jobs.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def mnist_dir(tmp_path: Path) -> Path:
    """A directory with a tiny MNIST-format train (20) and test (10) split, gzip'd, hyphen style."""
    directory = tmp_path / "mnist"
    for split, n, seed in (("train", 20, 0), ("test", 10, 1)):
        write_idx_split(directory, split, *tiny_idx_arrays(n, seed), gz=True)
    return directory
