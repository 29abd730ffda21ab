"""Comparisons shared by the integration tests (no framework imported here)."""

from __future__ import annotations

from pathlib import Path

import torch


def assert_equal(a, b, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_equal(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def same_tree(a: Path, b: Path) -> None:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


def averages_of(callback) -> dict:
    return callback.recording.state_dict()["callbacks"]["averaging"]["averaged"]


def torchrun_two_processes(worker: str, tmp_path: Path, timeout_s: int) -> None:
    """Run ``worker`` (a script next to this file) under torchrun with 2 processes on CPU, with the run
    directory ``tmp_path/run`` and the capture prefix ``tmp_path/seen`` as its arguments."""
    import os
    import subprocess
    import sys

    here = Path(__file__).resolve().parent
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [str(here / worker), str(tmp_path / "run"), str(tmp_path / "seen")]
    env = {**os.environ, "PYTHONPATH": f"{here}:{here.parents[1] / 'src'}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=here, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
