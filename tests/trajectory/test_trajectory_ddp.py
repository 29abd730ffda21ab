"""DDP: a 2-process gloo run records the same trajectory as a single-process run with the same global batch.

Only rank 0 writes; the batch log (global indices) is byte-identical; the snapshots hold the same steps,
names and shapes, and values equal up to floating-point summation order (DDP averages gradients across
ranks). The model has no BatchNorm, so per-rank statistics play no part.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from trajlab.trajectory import TrajectoryStore, verify_run

CONFIG = {
    "data": {
        "name": "synthetic",
        "pad_to": None,
        "crop_padding": 1,
        "synthetic": {"n": 128, "n_test": 32, "num_classes": 4, "size": 8, "channels": 1},
    },
    "model": {"name": "simple_cnn", "width": 4, "channels_last": False},
    "optim": {"lr": 0.05, "momentum": 0.9},
    "train": {
        "batch_size": 16,
        "steps": 8,
        "eval_every_steps": 8,
        "log_every_steps": 4,
        "device": "cpu",
        "progress": False,
        "num_threads": 1,
        "eval_batch_size": 32,
    },
    "record": {"enabled": True, "snapshots": {"every_steps": 2}, "checkpoint_every_steps": 4},
}

_WORKER = """
import json, os, sys
from trajlab.cli import host_from_environment
from trajlab.config import RunConfig
from trajlab.runs.runner import run_training
host = host_from_environment(os.environ)
run_training(RunConfig.from_dict(json.loads(sys.argv[2])), sys.argv[1], host=host)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _runner_available() -> bool:
    try:
        from trajlab.runs.runner import run_training  # noqa: F401
    except ImportError:
        return False
    return dist.is_available() and dist.is_gloo_available()


@pytest.fixture
def restore_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.skipif(not _runner_available(), reason="needs trajlab.runs.runner and torch.distributed gloo")
def test_two_process_gloo_records_the_single_process_trajectory(
    tmp_path: Path, restore_threads: None
) -> None:
    from trajlab.cli import host_from_environment
    from trajlab.config import RunConfig
    from trajlab.runs.runner import run_training

    single = tmp_path / "single"
    run_training(RunConfig.from_dict(CONFIG), single, host=host_from_environment({}))

    ddp = tmp_path / "ddp"
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1")
        env.update(MASTER_PORT=port, OMP_NUM_THREADS="1")
        cmd = [sys.executable, "-c", _WORKER, str(ddp), json.dumps(CONFIG)]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        )
    try:
        errors = [proc.communicate(timeout=120)[1] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [p.returncode for p in procs] == [0, 0], errors[0][-2000:] + errors[1][-2000:]

    assert verify_run(ddp).ok
    a, b = TrajectoryStore(single), TrajectoryStore(ddp)
    assert a.steps() == b.steps() == [0, 2, 4, 6, 8]
    chunks = sorted(p.name for p in (single / "trajectory" / "batches").iterdir())
    for name in chunks:
        assert (single / "trajectory/batches" / name).read_bytes() == (
            ddp / "trajectory/batches" / name
        ).read_bytes()
    for step in a.steps():
        sa, sb = a.load(step), b.load(step)
        assert sa.keys() == sb.keys()
        for name in sa:
            torch.testing.assert_close(sb[name], sa[name], rtol=1e-4, atol=1e-5, msg=f"{name} at step {step}")
