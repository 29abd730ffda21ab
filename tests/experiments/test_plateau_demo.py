"""The plateau demo: its pure measurements on known numbers, and end to end on the tiny budget (seconds)."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest

from trajlab import cli
from trajlab.experiments.plateau_demo import PLATEAU_BUDGETS, choose_branch_step
from trajlab.experiments.plateau_measure import (
    bracket_check,
    ladder_reading_at,
    mean_se,
    measured_equivalent_lr,
    normalised_l1,
)

LADDER = {0.1: 0.39, 0.05: 0.34, 0.025: 0.33, 0.0125: 0.32, 0.00625: 0.31}


def test_measured_equivalent_lr_interpolates_in_log_lr_on_loss_and_accuracy() -> None:
    lr, note = measured_equivalent_lr(LADDER, 0.325)
    assert note is None and lr == pytest.approx(math.sqrt(0.025 * 0.0125))
    acc = {r: 1 - v for r, v in LADDER.items()}  # accuracy rises as the lr falls
    assert measured_equivalent_lr(acc, 1 - 0.325, higher_is_better=True)[0] == pytest.approx(lr)
    below, note = measured_equivalent_lr(LADDER, 0.30)
    assert below < 0.00625 and "extrapolated" in note


def test_ladder_reading_and_the_bracket_check() -> None:
    assert ladder_reading_at(LADDER, 0.05) == (pytest.approx(0.34), False)
    assert ladder_reading_at(LADDER, 0.2)[1]  # above the top rung: extrapolated
    runs = {"predicted": 0.33, "2x": 0.34, "half": 0.32}
    assert bracket_check(0.331, runs)["passed"] is True
    fail = bracket_check(0.322, runs)
    assert fail["passed"] is False and fail["nearest"] == "half"
    assert bracket_check(0.33, {"predicted": 0.33, "2x": math.nan, "half": 0.32})["passed"] is None


def test_mean_se_and_normalised_l1() -> None:
    m, se = mean_se([1.0, 2.0, 3.0, math.nan])
    assert m == 2.0 and se == pytest.approx(1 / math.sqrt(3))
    assert normalised_l1([1.0, 2.0], [1.0, 4.0]) == pytest.approx(2 / 5)
    assert math.isnan(normalised_l1([math.nan], [1.0]))


def test_branch_step_is_on_the_plateau_with_a_fixed_ladder_length_within_the_cap() -> None:
    b = PLATEAU_BUDGETS["default"]  # 24k steps, ladder 8k steps, at least 6k, checkpoints every 1k
    assert choose_branch_step(8_000, b) == 16_000  # plateau early: the ladder's fixed length
    assert choose_branch_step(16_345, b) == 17_000  # later: the first checkpoint on the plateau
    assert choose_branch_step(23_000, b) == 18_000  # too late: the cap
    assert choose_branch_step(None, b) == 18_000  # no plateau: the cap


def test_snapshots_cover_every_gap_at_every_end_time() -> None:
    for b in PLATEAU_BUDGETS.values():
        sched = b.snapshot_schedule()
        every = b.end_every_steps
        at = set(json.loads(sched.split("at_steps = ")[1].rstrip("}")))
        for t in b.end_times:
            for k in b.gaps:
                if t - k >= 0:
                    assert (t - k) % every == 0 or t - k in at, (t, k)


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``trajlab demo --budget tiny`` once per module: (output directory, what it printed)."""
    out_dir = tmp_path_factory.mktemp("plateau-demo")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli.main(["demo", "--budget", "tiny", "--out", str(out_dir)]) == 0
    return out_dir, buf.getvalue()


def test_tiny_plateau_demo_end_to_end(tiny_demo: tuple[Path, str]) -> None:
    tmp_path, out = tiny_demo
    assert "plateau" in out and "EMA 0.9" in out and "two-point gain" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary) >= {"plateau", "ema", "two_point", "wall_seconds"}
    assert set(summary["plateau"]) >= {"reached", "from_step"}
    for e in summary["ema"]:
        assert set(e) >= {
            "decay",
            "measured_equivalent_lr",
            "predicted_equivalent_lr",
            "ema_test_loss",
            "constant_lr_test_loss",
        }
    tp = summary["two_point"]
    assert set(tp) >= {"gaps", "measured_gain", "predicted_gain", "half_lr_gain", "largest_gap_gain"}
    assert len(tp["gaps"]) == len(tp["measured_gain"]) == len(tp["predicted_gain"]) >= 3
    html = (tmp_path / "report.html").read_text()
    assert "The paper&#39;s claims on this run" in html and "paper&#39;s claim" in html
    assert html.index('id="plateau"') < html.index('id="overview"')


def test_the_plateau_section_escapes_what_it_reads(tiny_demo: tuple[Path, str], tmp_path: Path) -> None:
    from trajlab.reports import html as report

    run_dir = next((tiny_demo[0] / "runs").glob("base-*"))
    path = run_dir / report.ANALYSIS_DIR / "plateau.json"
    doc = json.loads(path.read_text())
    doc["table"][0]["claim"] = "<script>alert('x')</script>"
    path.write_text(json.dumps(doc))
    html = report.build_report([run_dir], tmp_path / "r.html").read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
