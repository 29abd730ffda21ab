"""Smoke tests of ``trajlab average`` on a tiny recorded run: values equal hand-built averages, a rule the
snapshots cannot represent exits 2 with the averaging module's message, output formats, --help."""

from __future__ import annotations

import json

import pytest
import torch

from trajlab.cli import main
from trajlab.config import resolve_config
from trajlab.runs import build
from trajlab.runs.runner import load_run_config, run_training
from trajlab.train.evaluate import evaluate_model
from trajlab.trajectory import TrajectoryStore

RECORD = ["train.num_threads=1", "record.enabled=true", "record.snapshots={every_steps = 2}"]
_RUNS: dict = {}


@pytest.fixture
def run_dir(tmp_path_factory, tiny_overrides):
    """One tiny recorded run (12 steps, snapshots every 2) shared by this module's tests."""
    if "run" not in _RUNS:
        cfg = resolve_config(None, None, tiny_overrides + RECORD)
        _RUNS["run"] = run_training(cfg, tmp_path_factory.mktemp("avg") / "run").run_dir
    return _RUNS["run"]


def _test_loss(run_dir, state: dict) -> dict:
    cfg = load_run_config(run_dir)
    train_ds, test_ds = build.build_train_data(cfg), build.build_test_data(cfg)
    model = build.build_model_for(cfg, train_ds)
    model.load_state_dict(state)
    return evaluate_model(model, lambda: build.iterate_eval(test_ds, cfg.train.eval_batch_size))


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["average", "--help"])
    assert e.value.code == 0
    assert "--two-point-gap" in capsys.readouterr().out


def test_averages_equal_hand_built(run_dir, tmp_path, capsys):
    out = tmp_path / "avg.json"
    argv = ["average", str(run_dir), "--ema", "0.9", "--two-point-gap", "4", "--swa-start", "6"]
    assert main([*argv, "--bn", "running", "--device", "cpu", "--json", "--out", str(out)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == doc
    assert doc["every_steps"] == 2 and doc["provenance"]["command"][:2] == ["trajlab", "average"]
    rows = {(r["rule"], r["bn"]): r for r in doc["rows"]}
    assert {r["at_step"] for r in doc["rows"]} == {12}
    assert set(rows) == {
        ("last", "running"),
        ("last", "recalibrated"),
        ("ema_0.9", "running"),
        ("two_point_k4", "running"),
        ("swa_start6", "running"),
    }

    store = TrajectoryStore(run_dir)
    snaps = {s: store.load(s) for s in store.steps()}
    last = snaps[12]
    params = [k for k, v in last.items() if k.split(".")[-1] in ("weight", "bias")]

    def with_params(avg: dict) -> dict:
        # BN running statistics come from the snapshot at the step read (online buffers="copy").
        return {**last, **avg}

    ema = {k: snaps[0][k].clone() for k in params}
    for step in range(2, 13, 2):  # updated every 2 steps: per-update decay 0.9**2, horizon in steps kept
        for k in params:
            ema[k] = 0.81 * ema[k] + 0.19 * snaps[step][k]
    two_point = {k: (snaps[12][k] + snaps[8][k]) / 2 for k in params}
    swa = {k: sum(snaps[s][k] for s in (6, 8, 10, 12)) / 4 for k in params}
    for name, avg in (("ema_0.9", ema), ("two_point_k4", two_point), ("swa_start6", swa)):
        want = _test_loss(run_dir, with_params(avg))
        assert rows[(name, "running")]["test_loss"] == pytest.approx(want["loss"], rel=1e-5), name
        assert rows[(name, "running")]["test_acc"] == pytest.approx(want["acc"])
    want = _test_loss(run_dir, last)
    assert rows[("last", "running")]["test_loss"] == pytest.approx(want["loss"], rel=1e-6)
    assert rows[("two_point_k4", "running")]["snapshots_used"] == 2


def test_recalibrated_table(run_dir, capsys):
    argv = [
        "average",
        str(run_dir),
        "--two-point-gap",
        "4",
        "--bn-batches",
        "2",
        "--at-step",
        "8",
        "--at-step",
        "12",
    ]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rule", "at_step", "bn", "test_loss", "test_acc"]
    body = [line.split() for line in lines[2:-1]]
    assert [(r[0], r[1], r[2]) for r in body] == [
        ("last", "8", "running"),
        ("last", "8", "recalibrated"),
        ("two_point_k4", "8", "recalibrated"),
        ("last", "12", "running"),
        ("last", "12", "recalibrated"),
        ("two_point_k4", "12", "recalibrated"),
    ]
    assert torch.isfinite(torch.tensor([float(r[3]) for r in body])).all()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--two-point-gap", "3"], "not a multiple of every_steps=2"),
        (["--ema", "0.9", "--every-steps", "1"], "the store lacks"),
        (["--ema", "1.5"], "decay must be in [0, 1)"),
        (["--ema", "0.9", "--at-step", "5"], "no snapshot of that step"),
    ],
)
def test_unrepresentable_or_bad_rule_exits_2_before_writing(run_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "avg.json"
    assert main(["average", str(run_dir), *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trajlab: error:") and message in err
    assert not out.exists()


def test_not_a_run_exits_2(tmp_path, capsys):
    assert main(["average", str(tmp_path), "--ema", "0.9"]) == 2
    assert "not a trajlab run directory" in capsys.readouterr().err
