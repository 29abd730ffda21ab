"""One tiny demo run (synthetic data, seconds) shared by the report test modules of a session."""

from __future__ import annotations

from pathlib import Path

import pytest

_RUNS: dict[int, Path] = {}


def tiny_demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A completed tiny run with every analysis file (``RUN/analysis/``) the report reads."""
    key = id(tmp_path_factory)  # one per pytest session
    if key not in _RUNS:
        from trajlab.experiments.demo import run_demo

        result = run_demo(tmp_path_factory.mktemp("demo"), budget="tiny")
        assert result.run_dir is not None
        _RUNS[key] = result.run_dir
    return _RUNS[key]
