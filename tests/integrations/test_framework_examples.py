"""Both framework examples run with --tiny, and the four commands accept the runs they write, no flags."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "needs"),
    [("lightning_trajectory.py", "lightning"), ("hf_trainer_trajectory.py", "transformers")],
)
def test_example_and_the_four_commands(tmp_path: Path, capsys, script: str, needs: str) -> None:
    pytest.importorskip(needs, reason=f"{script} needs {needs} (`pip install trajlab[dev]`)")
    from trajlab.cli import main

    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--tiny", "--out", str(run)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "summary.json").is_file()
    for command in (
        f"runs verify {run}",
        f"average {run} --ema 0.99",
        f"probe {run} --line",
        f"report {run} --out {run}/report.html",
    ):
        assert main(command.split(), environ={"TRAJLAB_NUM_THREADS": "1"}) == 0, command
    out = capsys.readouterr().out
    assert f"OK: {run}" in out and "ema_0.99" in out and "median R^2" in out
    assert (run / "report.html").is_file()


def test_readme_sketches_compile_and_import() -> None:
    """The README's framework blocks are sketches (not run); they compile and their imports exist."""
    import ast
    import importlib
    import re

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Lightning and Hugging Face Trainer\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 2
    for block, needs in zip(blocks, ("lightning", "transformers")):
        tree = ast.parse(block)
        if importlib.util.find_spec(needs) is None:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                module = importlib.import_module(node.module)
                assert all(hasattr(module, a.name) for a in node.names), node.module
