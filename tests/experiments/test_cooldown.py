"""The cooldown moonshot: the model's pick (the largest EMA horizon inside the plateau) and the driver end
to end on synthetic data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

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


@pytest.mark.slow
def test_branched_cooldowns_equal_full_runs_and_posthoc_evaluation(tmp_path, monkeypatch) -> None:
    """The plateau-long budget's two mechanisms on the tiny data: a cooldown branched from the constant
    run where its decay starts ends with the same weights as the same schedule trained from step 0, and
    the post hoc evaluation (final checkpoint, BN recalibrated) gives what the runs logged at T."""
    from trajlab.experiments.claims import cooldown
    from trajlab.experiments.claims.cache import ensure_runs
    from trajlab.trajectory import list_checkpoints, load_checkpoint

    tiny = cooldown.COOLDOWN_BUDGETS["tiny"]
    monkeypatch.setitem(cooldown.COOLDOWN_BUDGETS, "tiny-branch", {**tiny, "branch": True, "posthoc": True})
    branched = cooldown.specs("tiny-branch", [0])
    assert branched[("linear_20", 0)].branch_from == (branched[("constant", 0)], 160)
    assert branched[("constant", 0)].branch_from is None and branched[("cosine", 0)].branch_from is None
    full = cooldown.specs("tiny", [0])[("linear_20", 0)]
    # The same config as the branch, trained from step 0 (checkpoints every 20 steps as in the branch).
    alone = cooldown.RunSpec("alone", full.preset, branched[("linear_20", 0)].overrides)
    wanted = [branched[("constant", 0)], branched[("linear_20", 0)], alone]
    dirs = ensure_runs(tmp_path, wanted, progress=False)
    (run_branch, run_alone) = (dirs[branched[("linear_20", 0)].name], dirs["alone"])
    final = [load_checkpoint(list_checkpoints(d)[-1][1])["model"] for d in (run_branch, run_alone)]
    assert list_checkpoints(run_branch)[-1][0] == 200
    for k in final[0]:
        assert torch.equal(final[0][k], final[1][k]), k
    # Post hoc from the final checkpoint = what the run logged at its last evaluation (no BN here).
    constant = dirs[branched[("constant", 0)].name]
    assert cooldown._state_acc(constant, None) == pytest.approx(cooldown._final_acc(constant), abs=1e-9)
    assert cooldown._state_acc(constant, None, 0.99) == pytest.approx(
        cooldown._final_acc(constant, "ema_0.99/test_acc"), abs=1e-9
    )
