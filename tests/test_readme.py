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
