"""trajlab never needs Lightning or transformers; their adapters say which extra to install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

BLOCKED = """
import sys
for name in ("lightning", "lightning.pytorch", "pytorch_lightning", "transformers"):
    sys.modules[name] = None  # an import of it fails, as if it were not installed
import trajlab, trajlab.runs, trajlab.averaging, trajlab.integrations
try:
    import trajlab.integrations.{module}
except ImportError as e:
    print(e)
"""


@pytest.mark.parametrize(("module", "extra"), [("lightning", "lightning"), ("hf", "hf")])
def test_missing_framework_is_one_line_naming_the_extra(module: str, extra: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED.format(module=module)],
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith(f"pip install trajlab[{extra}]") and proc.stdout.count("\n") == 1


def test_importing_trajlab_imports_no_framework() -> None:
    code = (
        "import sys, trajlab, trajlab.runs, trajlab.integrations; print(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'transformers')))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
