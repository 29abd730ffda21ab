"""Smoke tests of ``trajlab theory``: JSON equals the theory functions, plots are written, bad numbers
exit 2 with the theory module's message, and every subcommand has --help."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trajlab.averaging import SWA
from trajlab.cli import main
from trajlab.commands.theory import (
    best_ema_command,
    equivalent_lr_command,
    equivalent_schedule_command,
    two_point_gain_command,
)
from trajlab.theory import equivalent_schedule

SUBCOMMANDS = ["equivalent-schedule", "equivalent-lr", "two-point-gain", "best-ema"]


def _json(capsys, argv: list[str]) -> dict:
    assert main(["theory", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("argv", [["theory"], *[["theory", s] for s in SUBCOMMANDS]])
def test_help(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    assert "usage: trajlab theory" in capsys.readouterr().out


def test_equivalent_schedule_json_matches_theory(capsys):
    got = _json(
        capsys,
        ["equivalent-schedule", "--ema", "0.99", "--lr", "0.1", "--curvature", "0.5", "--steps", "300"],
    )
    want = equivalent_schedule_command(0.1, 0.5, 300, ema=0.99, json=True)
    assert got == json.loads(json.dumps(want))
    assert len(got["schedule"]) == 300


def test_equivalent_schedule_swa_start_uses_the_exact_map(capsys):
    got = _json(
        capsys,
        ["equivalent-schedule", "--swa-start", "50", "--lr", "0.1", "--curvature", "0.5", "--steps", "200"],
    )
    want = equivalent_schedule(SWA(start_step=50), 0.1, 0.5, 200)
    np.testing.assert_allclose(got["schedule"], want, rtol=1e-12)
    assert got["equivalent_constant_lr"] is None  # SWA without a window has no stationary loss
    assert got["schedule"][49] == pytest.approx(0.1)  # the run itself until the average starts


def test_other_subcommands_json_match_theory(capsys):
    got = _json(capsys, ["equivalent-lr", "--two-point-gap", "100", "--lr", "0.1", "--curvature", "0.5"])
    assert got == equivalent_lr_command(0.1, 0.5, two_point_gap=100, json=True)
    got = _json(capsys, ["two-point-gain", "--lr", "0.1", "--curvature", "0.5", "0.05", "--gaps", "1,10,100"])
    want = two_point_gain_command(0.1, [0.5, 0.05], gaps=(1, 10, 100), json=True)
    assert got == json.loads(json.dumps(want))
    got = _json(capsys, ["best-ema", "--lr", "0.1", "--curvature", "0.5", "--horizon-steps", "200"])
    want = best_ema_command(0.1, 0.5, 1.0, 200, 1.0, json=True)
    assert got["best_decay"] == pytest.approx(want["best_decay"], rel=1e-12)


def test_text_output(capsys):
    assert main(["theory", "equivalent-lr", "--ema", "0.99", "--lr", "0.1", "--curvature", "0.5"]) == 0
    assert "equivalent constant lr" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        [
            "equivalent-schedule",
            "--two-point-gap",
            "20",
            "--lr",
            "0.1",
            "--curvature",
            "0.5",
            "--steps",
            "100",
        ],
        ["equivalent-lr", "--swa-window", "20", "--lr", "0.1", "--curvature", "0.5"],
        ["two-point-gain", "--lr", "0.1", "--curvature", "0.5", "--gaps", "1,10"],
        ["best-ema", "--lr", "0.1", "--curvature", "0.5", "--horizon-steps", "100"],
    ],
)
def test_plot_written(tmp_path, capsys, argv):
    path = tmp_path / "sub" / "plot.png"
    assert main(["theory", *argv, "--plot", str(path)]) == 0
    assert path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["equivalent-schedule", "--ema", "1.0", "--lr", "0.1", "--curvature", "0.5", "--steps", "10"],
            "decay",
        ),
        (["equivalent-lr", "--ema", "0.9", "--lr", "5", "--curvature", "0.5"], "stability limit"),
        (["equivalent-lr", "--ema", "0.9", "--lr", "0.1", "--curvature", "-1"], "must be >= 0"),
        (["equivalent-lr", "--two-point-gap", "0", "--lr", "0.1", "--curvature", "1"], "gap"),
        (["equivalent-lr", "--lr", "0.1", "--curvature", "1"], "exactly one averaging rule"),
        (
            ["equivalent-lr", "--ema", "0.9", "--swa-window", "3", "--lr", "0.1", "--curvature", "1"],
            "exactly one",
        ),
        (
            ["equivalent-lr", "--swa-window", "3", "--lr", "0.1", "--curvature", "1", "--plot", "x.txt"],
            "--plot",
        ),
    ],
)
def test_bad_numbers_exit_2(capsys, argv, message):
    assert main(["theory", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trajlab: error:") and message in err and err.count("\n") == 1


def test_cli_commands_are_json():
    out = equivalent_schedule_command(ema=0.999, lr=0.1, curvature=0.5, steps=500, json=True)
    json.dumps(out)
    assert out["final_lr"] == pytest.approx(0.1 * 0.001)
    assert "text" in equivalent_lr_command(lr=0.1, curvature=0.5, two_point_gap=1000)
    json.dumps(two_point_gain_command(lr=0.1, curvature=0.5, json=True))
    json.dumps(best_ema_command(lr=0.1, curvature=0.5, noise=1.0, horizon_steps=200, start=1.0, json=True))
    with pytest.raises(ValueError, match="exactly one"):
        equivalent_schedule_command(lr=0.1, curvature=0.5, steps=10)
