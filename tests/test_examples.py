"""Every example script runs (on tiny synthetic data)."""

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_quickstart_runs(tmp_path):
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py"), "--tiny", "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "lr* =" in r.stdout and "two-point average" in r.stdout
