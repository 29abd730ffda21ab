"""The README's Python blocks run as written (on synthetic data where they would train for minutes)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _block(heading: str) -> str:
    text = README.read_text()
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, f"README section {heading!r} has no python block"
    return blocks[0]


def test_library_quickstart_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_overrides) -> None:
    import trajlab.config

    real = trajlab.config.resolve_config

    def tiny(preset=None, config=None, overrides=()):  # the README's config, on synthetic data
        return real(preset, config, [*overrides, *tiny_overrides, "train.steps=64", "train.epochs=1"])

    monkeypatch.setattr(trajlab.config, "resolve_config", tiny)
    monkeypatch.chdir(tmp_path)
    exec(compile(_block("Library quickstart"), "README.md", "exec"), {})
    assert (tmp_path / "runs" / "quick" / "summary.json").is_file()


def test_own_training_loop_and_the_four_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import subprocess
    import sys

    from trajlab.cli import main

    script = tmp_path / "own_loop.py"
    script.write_text(_block("Your own training loop"))
    src = Path(__file__).resolve().parents[1] / "src"
    env = {"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(
        [sys.executable, "own_loop.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    monkeypatch.chdir(tmp_path)
    commands = re.findall(r"^trajlab (.+?)(?:\s+#.*)?$", _bash_block("Your own training loop"), flags=re.M)
    assert len(commands) == 4
    for command in commands:
        assert main(command.split(), environ={}) == 0, command
    out = capsys.readouterr().out
    assert "OK: runs/own-loop" in out and "ema_0.99" in out and "median R^2" in out
    assert (tmp_path / "runs" / "own-loop" / "report.html").is_file()


def _bash_block(heading: str) -> str:
    section = README.read_text().split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)[0]
