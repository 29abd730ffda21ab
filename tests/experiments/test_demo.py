"""``trajlab demo`` end to end on the tiny budget (synthetic data): train, analyse, report, reuse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trajlab import cli
from trajlab.config import ConfigError
from trajlab.experiments.demo import config_hash, demo_config, run_demo
from trajlab.reports import html as report


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo")


def test_tiny_demo_trains_analyses_and_reports(demo_out: Path) -> None:
    result = run_demo(demo_out, budget="tiny")
    run = result.run_dir
    assert run is not None and run.name == f"run-{config_hash(demo_config('tiny'))}"
    assert (run / "summary.json").is_file() and (run / "trajectory").is_dir()
    for name in (report.LINE_PROBES, report.LOSS_MATRIX, report.BATCH_MEMORY, report.POST_HOC, report.THEORY):
        assert (run / report.ANALYSIS_DIR / name).is_file(), name
    post = json.loads((run / report.ANALYSIS_DIR / report.POST_HOC).read_text())
    assert {"two_point_k8", "ema_0.9"} <= {r["name"] for r in post["rows"]}
    theory = json.loads((run / report.ANALYSIS_DIR / report.THEORY).read_text())
    assert theory["fit"]["curvature h"] > 0 and len(theory["two_point"]["gaps"]) >= 2
    assert result.report == demo_out / "report.html" and result.report.is_file()
    text = result.summary_text()
    for key in ("trained", "test acc (online)", "two-point (post hoc)", "line probes", "theory", "report"):
        assert key in text
    assert set(result.timings_s) == {"train", "probes", "loss matrix", "post hoc", "theory", "report"}


def test_demo_command_reuses_the_completed_run(demo_out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = next(demo_out.glob("run-*"))
    mtime = (run / "analysis" / report.THEORY).stat().st_mtime
    assert cli.main(["demo", "--budget", "resnet-tiny", "--out", str(demo_out)]) == 0
    out = capsys.readouterr().out
    assert "reused" in out and str((demo_out / "report.html").resolve()) in out
    assert (run / "analysis" / report.THEORY).stat().st_mtime == mtime  # analysis reused too


def test_cache_key_ignores_threads_but_not_the_config() -> None:
    assert config_hash(demo_config("tiny", num_threads=1)) == config_hash(demo_config("tiny", num_threads=2))
    assert config_hash(demo_config("tiny")) != config_hash(demo_config("default"))
    with pytest.raises(ConfigError, match="unknown demo budget"):
        demo_config("huge")
