"""Smoke tests of ``trajlab probe`` on a tiny recorded run: files written, R^2 and the ratios in the JSON,
bad steps exit 2, --help."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from trajlab.cli import main
from trajlab.commands.probe import distribution
from trajlab.config import resolve_config
from trajlab.runs.runner import run_training

RECORD = ["train.num_threads=1", "record.enabled=true", "record.snapshots={every_steps = 4}"]
FAST = ["--bn", "batch", "--batches", "1", "--points", "8", "--no-hvp", "-q"]
_RUNS: dict = {}


@pytest.fixture
def run_dir(tmp_path_factory, tiny_overrides):
    """One tiny recorded run (12 steps, snapshots every 4) shared by this module's tests."""
    if "run" not in _RUNS:
        cfg = resolve_config(None, None, tiny_overrides + RECORD)
        _RUNS["run"] = run_training(cfg, tmp_path_factory.mktemp("probe") / "run").run_dir
    return _RUNS["run"]


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["probe", "--help"])
    assert e.value.code == 0
    assert "--weight-decay-in-grad" in capsys.readouterr().out


def test_line_matrix_alignment_written(run_dir, tmp_path, capsys):
    out = tmp_path / "probes"
    argv = ["probe", str(run_dir), "--line", "--matrix", "--alignment", "--out", str(out), *FAST]
    assert main([*argv, "--alignment-batches", "2", "--hessian-batches", "1", "--max-steps", "2"]) == 0
    stdout = capsys.readouterr().out
    assert "median R^2" in stdout and "wrote" in stdout
    doc = json.loads((out / "probe.json").read_text())
    # Default steps: stored steps that have a next batch (0, 4, 8), evenly capped to 2.
    assert doc["steps"] == [0, 8] and doc["batch_steps"] == [1, 9] and doc["bn_modes"] == ["batch"]
    for name in ("line_step0_bn-batch.png", "line_step8_bn-batch.png", "lr_star.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert (out / "loss_matrix_bn-batch.png").is_file() and (out / "batch_memory_bn-batch.png").is_file()
    line = doc["line"]
    assert len(line) == 2
    for r in line:
        assert r["lr"] == pytest.approx(0.05)  # TINY's constant lr
        assert r["lr_star_over_lr"] == pytest.approx(r["lr_star"] / 0.05)
        assert r["lr_star_over_effective_lr"] == pytest.approx(r["lr_star"] * (1 - 0.9) / 0.05)
        assert 0.0 <= r["one_step_fraction"] <= 1.0 and r["r2"] <= 1.0
        assert r["weight_decay"] == pytest.approx(5e-4)  # sgd: the update direction includes lambda theta
        assert set(r["control_losses"]) == {"heldout_0"}
    summary = doc["summary"]["batch"]
    assert summary["r2"]["n"] == 2
    assert summary["r2"]["median"] == pytest.approx(statistics.median(r["r2"] for r in line))
    matrix = doc["matrix"]["batch"]["matrix"]
    assert matrix["names"] == ["step_1", "step_9", "heldout_0"] and matrix["steps"] == [0, 4, 8, 12]
    assert len(doc["alignment"]) == 2 and doc["alignment"][0]["batch_steps"] == [1, 2]
    assert doc["cost_total"]["forwards"] > 0 and doc["provenance"]["command"][1] == "probe"

    # Results are never overwritten silently.
    assert main(argv) == 2
    assert "exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--steps", "5"], "no snapshot of that step"),
        (["--steps", "12"], "no B_13"),
        (["--steps", "0", "--batch", "used"], "no B_0"),
        (["--matrix", "--batches", "0"], "--batches N >= 1"),
        (["--batches", "9"], "lower --batches"),
    ],
)
def test_bad_input_exits_2(run_dir, tmp_path, capsys, extra, message):
    argv = ["probe", str(run_dir), "--out", str(tmp_path / "p"), "-q", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("trajlab: error:") and message in err
    assert not (tmp_path / "p" / "probe.json").exists()


def test_distribution_ignores_nan():
    d = distribution([1.0, math.nan, 3.0])
    assert d["n"] == 2 and d["median"] == 2.0 and d["min"] == 1.0
    assert distribution([])["n"] == 0
