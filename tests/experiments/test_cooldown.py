"""The cooldown moonshot: the model's pick (the largest EMA horizon inside the plateau) and the driver end
to end on synthetic data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trajlab.cli import main
from trajlab.experiments.claims.cooldown import EMA_CANDIDATES, pick_ema, pick_zero_lag, zero_lag_pair


def test_pick_is_the_largest_horizon_that_fits_three_times_in_the_plateau() -> None:
    # T - t_p = 12000 steps: 3 / (1 - d) <= 12000 allows d <= 0.99975; the largest candidate below is 0.9995.
    assert pick_ema(EMA_CANDIDATES, 20000, 8000) == 0.9995
    assert pick_ema(EMA_CANDIDATES, 20000, 17000) == 0.999  # 3000 steps: 3 / (1 - 0.999) = 3000 fits
    assert pick_ema(EMA_CANDIDATES, 20000, 19990) is None  # nothing fits in 10 steps


@pytest.mark.parametrize("a, b", [(0.999, 0.9995), (0.99, 0.998), (0.9995, 0.9998)])
def test_zero_lag_pair_has_no_lag_and_the_stated_white_noise_variance(a: float, b: float) -> None:
    """The discrete kernel w EMA_a - (w - 1) EMA_b: mean age 0 (no lag behind a linear drift), weights
    summing to 1, and sum of squared weights (its variance on independent iterates) 1 / (2 H_eff)."""
    w, h_eff = zero_lag_pair(a, b)
    age = np.arange(200_000, dtype=np.float64)
    kernel = w * (1 - a) * a**age - (w - 1) * (1 - b) * b**age
    assert kernel.sum() == pytest.approx(1.0, abs=1e-9)
    # Discrete EMAs lag by d / (1 - d) = H - 1 steps, so the lag is w (H_a - 1) - (w - 1)(H_b - 1) = -1.
    assert kernel @ age == pytest.approx(-1.0, abs=1e-6)
    # H_eff is the continuous-time value: off by O(1 / H_a) for discrete kernels (0.6% at H_a = 100).
    assert kernel @ kernel == pytest.approx(1 / (2 * h_eff), rel=1e-2)


def test_zero_lag_pick_is_the_longest_equivalent_horizon_in_the_second_half() -> None:
    # T / 2 = 10000: 3 H_b <= 10000 allows H_b <= 3333 (0.9995); the best pair with it is 0.999 / 0.9995.
    assert pick_zero_lag(EMA_CANDIDATES, 20000) == (0.999, 0.9995)
    assert zero_lag_pair(0.999, 0.9995)[0] == pytest.approx(2.0)
    assert pick_zero_lag(EMA_CANDIDATES, 200) is None


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
    # Every zero-lag pair evaluated from the constant runs' final checkpoints (too short for (a')'s pick).
    pair = doc["test_acc_percent"]["constant + zero-lag 0.999/0.9995"]
    assert pair["n"] == 2 and 0 <= pair["mean"] <= 100
    assert main(["reproduce", "cooldown", "--budget", "medium", "--out", str(tmp_path)]) == 2
