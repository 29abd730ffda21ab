"""Issue 4 item 6: with FSDP2 (fully_shard, DTensor) the average is kept shard-local and gathered only
when a full state dict is asked for; on CPU with gloo, two processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("fsdp_worker.py")


@pytest.mark.slow
def test_fsdp_average_is_shard_local_and_gathers_exactly(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, str(WORKER), str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        out = json.loads((tmp_path / f"out.rank{rank}").read_text())
        assert out["max_abs_err"] < 1e-6
        assert out["shapes"] == {"0.weight": [16, 8], "0.bias": [16], "2.weight": [4, 16], "2.bias": [4]}
        assert out["local_numel"] < out["full_numel"]  # each rank stores only its shard
