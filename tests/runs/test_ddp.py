"""torchrun --nproc_per_node 2 on CPU (gloo): same global batches and the same loss curve as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trajlab.train.metrics import read_metrics

WORKER = Path(__file__).with_name("ddp_worker.py")


def _overrides(tiny):
    # No BatchNorm: with DDP each rank normalises its own half batch, so a BN net differs by design.
    return [
        *tiny,
        "model.name=simple_cnn",
        "model.width=8",
        "model.channels_last=false",
        "train.log_every_steps=1",
    ]


def _launch(tmp_path, name, overrides, *, nproc=1, ok=True):
    """Run the worker in one process, or under torchrun with ``nproc`` processes (gloo)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRAJLAB_NUM_THREADS": "1"}
    launcher = (
        [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    )
    if nproc > 1:
        launcher += ["--nproc_per_node", str(nproc)]
    proc = subprocess.run(
        [*launcher, str(WORKER), str(tmp_path / name), str(tmp_path / f"{name}_idx"), *overrides],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_two_process_gloo_matches_single_process(tmp_path, tiny_overrides):
    overrides = _overrides(tiny_overrides)
    _launch(tmp_path, "single", overrides)
    _launch(tmp_path, "ddp", overrides, nproc=2)
    ref = json.loads((tmp_path / "single_idx.rank0").read_text())
    for rank in (0, 1):
        assert json.loads((tmp_path / f"ddp_idx.rank{rank}").read_text()) == ref  # identical global batches
    a = [r for r in read_metrics(tmp_path / "single" / "metrics.jsonl") if r["kind"] == "train"]
    b = [r for r in read_metrics(tmp_path / "ddp" / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 13))
    for ra, rb in zip(a, b):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-4, abs=1e-6)
    ea = [r for r in read_metrics(tmp_path / "single" / "metrics.jsonl") if r["kind"] == "eval"]
    eb = [r for r in read_metrics(tmp_path / "ddp" / "metrics.jsonl") if r["kind"] == "eval"]
    assert [r["test_acc"] for r in ea] == pytest.approx([r["test_acc"] for r in eb], abs=1 / 128 + 1e-9)


@pytest.mark.slow
def test_two_process_online_averages_agree_on_every_rank(tmp_path, tiny_overrides):
    """Issue 4, item 6: under DDP every rank holds the same average (and it matches one process)."""
    overrides = [*_overrides(tiny_overrides), "averaging.ema_decays=[0.9]", "averaging.two_point_gaps=[4]"]
    overrides.append("averaging.bn_batches=1")
    _launch(tmp_path, "single", overrides)
    _launch(tmp_path, "ddp", overrides, nproc=2)
    r0 = json.loads((tmp_path / "ddp_idx.avg.rank0").read_text())
    r1 = json.loads((tmp_path / "ddp_idx.avg.rank1").read_text())
    single = json.loads((tmp_path / "single_idx.avg.rank0").read_text())
    assert r0 and r0.keys() == r1.keys() == single.keys()
    assert r0 == r1  # bit-identical across ranks
    for key in r0:
        assert r0[key] == pytest.approx(single[key], rel=1e-4, abs=1e-5), key


@pytest.mark.slow
def test_a_failure_on_rank0_stops_every_rank_at_the_same_step(tmp_path, tiny_overrides):
    """Issue 14: a writer error on rank 0 reaches rank 1 through the per-step flag (no rank left waiting)."""
    proc = _launch(tmp_path, "ddp", [*_overrides(tiny_overrides), "fail_at=3"], nproc=2, ok=False)
    assert proc.returncode != 0
    stopped = [line for line in proc.stdout.splitlines() if " stopped after " in line]
    assert any(line.startswith("rank 0 ") and "writer failed at step 3" in line for line in stopped), (
        proc.stdout
    )
    assert any(line.startswith("rank 1 ") and "another rank failed at step 3" in line for line in stopped), (
        proc.stdout + proc.stderr[-2000:]
    )
    assert all(float(line.split(" after ")[1].split("s")[0]) < 60 for line in stopped)
