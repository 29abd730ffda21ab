"""The cooldown moonshot: the model's pick (the largest EMA horizon inside the plateau) and the driver end
to end on synthetic data."""

from __future__ import annotations

import json

import pytest

from trajlab.cli import main
from trajlab.experiments.claims.cooldown import EMA_CANDIDATES, pick_ema


def test_pick_is_the_largest_horizon_that_fits_three_times_in_the_plateau() -> None:
    # T - t_p = 12000 steps: 3 / (1 - d) <= 12000 allows d <= 0.99975; the largest candidate below is 0.9995.
    assert pick_ema(EMA_CANDIDATES, 20000, 8000) == 0.9995
    assert pick_ema(EMA_CANDIDATES, 20000, 17000) == 0.999  # 3000 steps: 3 / (1 - 0.999) = 3000 fits
    assert pick_ema(EMA_CANDIDATES, 20000, 19990) is None  # nothing fits in 10 steps


@pytest.mark.slow
def test_cooldown_tiny_end_to_end(tmp_path, capsys) -> None:
    argv = [
        "reproduce",
        "cooldown",
        "--budget",
        "tiny",
        "--seeds",
        "0,1",
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "(a) constant + predicted EMA" in out and "best cooldown" in out
    doc = json.loads((tmp_path / "tiny" / "claim_cooldown.json").read_text())
    # The prediction was written to its own file before the measurements were read.
    pred = json.loads((tmp_path / "tiny" / "claim_cooldown-prediction.json").read_text())
    assert {int(k): v["ema_decay"] for k, v in pred["picks"].items()} == {
        int(k): v["ema_decay"] for k, v in doc["predictions"].items()
    }
    for name in ("linear_10", "linear_20", "linear_40", "cosine", "(a) constant + predicted EMA"):
        assert doc["test_acc_percent"][name]["n"] == 2
    assert doc["best_cooldown"] in ("linear_10", "linear_20", "linear_40")
    assert doc["verdict"]["verdict"] in ("reached", "not reached")
    assert main(["reproduce", "cooldown", "--budget", "medium", "--out", str(tmp_path)]) == 2
