"""Smoke tests of ``trajlab probe`` on a tiny recorded run: files written, R^2 and the ratios in the JSON,
bad steps exit 2, --help."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch

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


def test_spectrum_beside_the_line_probe(run_dir, tmp_path, capsys):
    """--spectrum: eigenvalues with residuals, the trace with its standard error, the HVP count and the
    paper's comparisons; lr* along the gradient is never below 1/lambda_max (exact curvature)."""
    from trajlab.probes import top_eigenvalues
    from trajlab.runs import RecordedRun

    out = tmp_path / "spec"
    argv = ["probe", str(run_dir), "--line", "--spectrum", "--steps", "8", "--out", str(out), "-q"]
    assert main([*argv, "--bn", "batch", "--batches", "1", "--points", "8", "--top-k", "2"]) == 0
    stdout = capsys.readouterr().out
    assert "top eigenvalues" in stdout and "HVPs" in stdout
    doc = json.loads((out / "probe.json").read_text())
    (r,) = doc["spectrum"]
    assert r["step"] == 8 and r["batch_step"] == 9 and len(r["eigenvalues"]) == 2
    assert r["eigenvalues"][0] >= r["eigenvalues"][1] and r["lambda_max"] == r["eigenvalues"][0]
    for lam, res, ok in zip(r["eigenvalues"], r["residuals"], r["converged"]):
        assert not ok or res <= r["eig_tol"] * abs(lam)
    assert math.isfinite(r["trace"]) and r["trace_std_error"] > 0 and r["trace_samples"] >= 10
    assert r["lr_lambda_max_over_limit"] == pytest.approx(0.05 * r["lambda_max"] / (2 * 1.9))
    # The update direction's Rayleigh quotient never exceeds the top eigenvalue (exact curvature).
    assert 0 < r["curvature_along_direction_over_lambda_max"] <= 1 + 1e-3
    assert r["lr_star_times_lambda_max"] == pytest.approx(r["lr_star"] * r["lambda_max"])
    # The same number through the library on the same batch, model and seed.
    run = RecordedRun(run_dir)
    ref = top_eigenvalues(run.load_weights(8), run.loss_fn, run.batch(9), k=2, tol=1e-3, bn="batch")
    assert r["eigenvalues"] == pytest.approx(list(ref.eigenvalues), rel=1e-6)


def test_spectrum_of_the_training_loss(run_dir, tmp_path, capsys):
    """--spectrum-images N: the Hessian of the training loss over the first N training images (in order,
    unaugmented), the same numbers as the library's ``data=`` on those images."""
    from trajlab.probes import hessian_trace, top_eigenvalues
    from trajlab.runs import RecordedRun

    out = tmp_path / "spec-data"
    argv = ["probe", str(run_dir), "--spectrum", "--spectrum-images", "100", "--steps", "8"]
    assert (
        main([*argv, "--out", str(out), "--bn", "batch", "--top-k", "2", "--trace-samples", "10", "-q"]) == 0
    )
    assert "(100 training images)" in capsys.readouterr().out
    (r,) = json.loads((out / "probe.json").read_text())["spectrum"]
    assert r["hessian_of"] == "training images" and r["n_examples"] == 100
    assert r["trace_over_lambda_max"] == pytest.approx(r["trace"] / r["lambda_max"])
    run = RecordedRun(run_dir)
    images = [(x, y) for x, y in run.train_batches_in_order()]
    x, y = torch.cat([b[0] for b in images])[:100], torch.cat([b[1] for b in images])[:100]
    data = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 100, 64)]  # the tiny preset's eval batches
    model = run.load_weights(8)
    ref = top_eigenvalues(model, run.loss_fn, data=data, k=2, tol=1e-3, max_iter=100, bn="batch")
    assert r["eigenvalues"] == pytest.approx(list(ref.eigenvalues), rel=1e-5)
    tr = hessian_trace(model, run.loss_fn, data=data, max_samples=10, bn="batch")
    assert r["trace"] == pytest.approx(tr.trace, rel=1e-5)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--spectrum", "--top-k", "0"], "--top-k"),
        (["--spectrum", "--spectrum-images", "-1"], "--spectrum-images must be >= 0"),
        (["--spectrum", "--spectrum-images", "100000000"], "the training set has"),
        (["--spectrum-images", "all"], "add --spectrum"),
        (["--spectrum", "--eig-tol", "2"], "--eig-tol"),
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
