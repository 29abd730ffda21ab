"""Claim drivers A-H end to end at budget "tiny" (synthetic data, one seed, all runs shared through one
cache), and every verdict rule on constructed numbers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from trajlab.commands.io import UsageError
from trajlab.commands.reproduce import parse_claims, parse_seeds
from trajlab.experiments import claims
from trajlab.experiments.claims import common
from trajlab.experiments.claims.alignment import g_verdict, loglog_slope
from trajlab.experiments.claims.averaging import e_verdict, f_verdict, usable_gaps
from trajlab.experiments.claims.base_runs import detect_plateau, shared_window
from trajlab.experiments.claims.budgets import base_spec, get_budget, lr_half_spec
from trajlab.experiments.claims.cache import RunSpec
from trajlab.experiments.claims.lines import _half_life, a_verdict, b_verdict, line_steps
from trajlab.experiments.claims.stationarity import c_verdict
from trajlab.experiments.claims.trajectories import d_verdict

R, N, I = common.REPRODUCED, common.NOT_REPRODUCED, common.INCONCLUSIVE


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def tiny_out(tmp_path_factory):
    import torch

    # One thread: these tiny models are far too small to gain from more, and on a loaded 2-core machine
    # extra OpenMP threads only spin (10-20x the CPU time).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("claims")
    claims.prepare_runs(out, budget="tiny", seeds=(0,), progress=False)
    yield out
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("asked", "labels"), [("E", {"base", "lr_half"}), ("D", {"base", "reorder"})])
def test_prepare_runs_trains_only_what_the_asked_claims_read(tmp_path, asked, labels):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        claims.prepare_runs(tmp_path, budget="tiny", seeds=(0,), claims=(asked,), progress=False)
    finally:
        torch.set_num_threads(threads)
    trained = {d.name.split("-s0-")[0] for d in (tmp_path / "runs").iterdir() if d.is_dir()}
    assert trained == labels


@pytest.mark.parametrize("claim", list("HABCDEFG"))
def test_every_claim_driver_runs_end_to_end_on_tiny(tiny_out, claim):
    doc = claims.CLAIMS[claim](tiny_out, budget="tiny", seeds=(0,), progress=False)
    saved = json.loads((tiny_out / f"claim_{claim}.json").read_text())
    assert saved["claim"] == claim and saved["seeds"] == [0]
    assert doc["verdict"]["verdict"] in common.VERDICTS
    assert saved["verdict"]["criterion"] and "git" in saved["provenance"]
    if claim == "D":  # the replay of "same batches, different starts" is the engine's step, exactly
        assert saved["verdict"]["replay_relative_error_max"] < 1e-6
    for fig in saved["figures"]:
        assert fig.endswith(".png") and (tiny_out / fig.split("/")[-1]).stat().st_size > 0


def test_runs_are_cached_not_retrained(tiny_out):
    from trajlab.experiments.claims.cache import ensure_runs

    spec = base_spec(get_budget("tiny"), 0)
    summary = spec.run_dir(tiny_out) / "summary.json"
    before = summary.stat().st_mtime_ns
    ensure_runs(tiny_out, [spec], progress=False)
    assert summary.stat().st_mtime_ns == before
    assert len(list((tiny_out / "runs").glob("base-s0-*"))) == 1


# ------------------------------------------------------------------------------------------ run cache


def test_run_key_ignores_volatile_settings_and_tracks_everything_else():
    b = get_budget("tiny")
    base = base_spec(b, 0)
    quiet = RunSpec(base.name, base.preset, (*base.overrides, "train.progress=true", "train.num_threads=3"))
    assert quiet.key() == base.key()
    assert RunSpec(base.name, base.preset, (*base.overrides, "optim.lr=0.02")).key() != base.key()
    assert base_spec(b, 1).key() != base.key()
    assert lr_half_spec(b, 0, 8).key() != lr_half_spec(b, 0, 16).key()  # the branch step is in the key


def test_budget_and_cli_parsing_errors_are_clear():
    with pytest.raises(ValueError, match="unknown budget"):
        get_budget("huge")
    assert parse_claims("all") == list("HABCDEFG")
    assert parse_claims("e,a") == ["A", "E"]
    with pytest.raises(UsageError, match="unknown claim"):
        parse_claims("Z")
    assert parse_seeds("0,1,2") == (0, 1, 2)
    for bad in ("a", "0,0", "-1"):
        with pytest.raises(UsageError):
            parse_seeds(bad)


# ------------------------------------------------------------------------------------------ helpers


def test_common_verdict_and_significance():
    assert common.verdict({"a": True, "b": True}, "c", n=3, required_n=3)["verdict"] == R
    assert common.verdict({"a": True, "b": False}, "c", n=3)["verdict"] == N
    assert common.verdict({"a": True, "b": None}, "c", n=3)["verdict"] == I
    assert common.verdict({"a": True}, "c", n=1, required_n=3)["verdict"] == I
    assert common.verdict({"a": False}, "c", preconditions={"stationary": False})["verdict"] == I
    assert common.significantly_positive([1.0, 1.1, 0.9])
    assert not common.significantly_positive([1.0, -1.0, 0.5])
    assert common.mean_std([1.0, 3.0, math.nan]) == {"mean": 2.0, "std": math.sqrt(2.0), "n": 2}


def test_detect_plateau_finds_a_saturating_curve_and_rejects_a_trend():
    rng = np.random.default_rng(0)
    steps = np.arange(10, 801, 10)
    flat = 0.3 + 0.5 * np.exp(-steps / 80) + 0.02 * rng.standard_normal(steps.size)
    p = detect_plateau(steps, flat, windows=10)
    assert p.found and 160 <= p.start_step <= 480 and abs(p.drift) < 0.05
    trend = 1.0 - steps / 1000 + 0.01 * rng.standard_normal(steps.size)
    assert not detect_plateau(steps, trend, windows=10).found
    with pytest.raises(ValueError):
        detect_plateau(steps[:5], flat[:5], windows=10)


def _fake_base_runs(root, train_loss, held_out_loss, seeds=(0, 1, 2)):
    """Base-run directories of budget "small" holding only metrics.jsonl (what the window reads)."""
    b = get_budget("small")
    for seed in seeds:
        run_dir = base_spec(b, seed).run_dir(root)
        run_dir.mkdir(parents=True)
        rng = np.random.default_rng(seed)
        rows = [
            {"kind": "train", "step": t, "train_loss": train_loss(t) + 0.005 * rng.standard_normal()}
            for t in range(10, 801, 10)
        ]
        rows += [
            {"kind": "eval", "step": t, "live_recal/test_loss": held_out_loss(t) + 0.005 * noise}
            for t, noise in zip(range(50, 801, 50), rng.standard_normal(16))
        ]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return b


@pytest.mark.parametrize(
    ("train_loss", "held_out_loss", "stationarity"),
    [
        (lambda t: 0.3 + 0.5 * math.exp(-t / 60), lambda t: 0.4, "train loss"),
        (lambda t: 0.6 - 3e-4 * t, lambda t: 0.4 + 0.3 * math.exp(-t / 60), "held-out loss"),
        (lambda t: 0.6 - 3e-4 * t, lambda t: 0.6 - 3e-4 * t, "none"),
    ],
)
def test_window_is_stationary_by_train_or_held_out_loss(tmp_path, train_loss, held_out_loss, stationarity):
    b = _fake_base_runs(tmp_path, train_loss, held_out_loss)
    w = shared_window(tmp_path, b, (0, 1, 2))
    assert w.stationarity == stationarity
    assert w.in_plateau == (stationarity != "none")
    # The branch step follows the train loss only (so adding the held-out test moved no cached branch).
    starts = [p["start_step"] for p in w.plateaus.values()]
    assert w.branch_step == (math.ceil(max(starts) / 100) * 100 if stationarity == "train loss" else 400)
    assert set(w.to_dict()["held_out_plateaus"]) == {0, 1, 2}


def test_small_helpers():
    assert usable_gaps((25, 50, 60, 400, 800), 400, 25) == [25, 50, 400]
    assert line_steps(list(range(0, 101, 10)), 3) == [10, 50, 90]
    assert _half_life([0, 1, 2, 4], [1.0, 0.8, 0.4, 0.1]) == pytest.approx(1 + 0.3 / 0.4)
    assert math.isnan(_half_life([0, 1], [1.0, 0.9]))
    assert loglog_slope([0.01, 0.04], [0.1, 0.2]) == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------ verdicts


def _line_row(r2=0.98, frac=0.05, lr_star=2.0, control=0.9, step=100):
    return {
        "r2": r2,
        "one_step_fraction": frac,
        "lr_star": lr_star,
        "control_ratio_at_lr_star": control,
        "bracketed": True,
        "step": step,
    }


def test_a_verdict():
    good = [_line_row(step=s) for s in (100, 200, 300)]
    assert a_verdict(good, lr=0.1)["verdict"] == R
    assert a_verdict([_line_row(r2=0.5, step=s) for s in (1, 2, 3)], lr=0.1)["verdict"] == N
    assert a_verdict([_line_row(lr_star=0.2, step=s) for s in (1, 2, 3)], lr=0.1)["verdict"] == N
    assert a_verdict([_line_row(control=0.1, step=s) for s in (1, 2, 3)], lr=0.1)["verdict"] == N
    assert a_verdict(good[:2], lr=0.1)["verdict"] == I


def _memory(k0=0.5, decay=10.0, future=0.8, heldout=1.0):
    ks = [0, 1, 2, 4, 8, 16, 32, 64]
    return {
        "k": ks,
        "used_loss": [future - (future - k0) * math.exp(-k / decay) for k in ks],
        "future_loss_mean": future,
        "heldout_loss_mean": heldout,
    }


def test_b_verdict():
    v = b_verdict({0: _memory(), 1: _memory()}, predicted_tau=10.0)
    assert v["verdict"] == R and v["half_life_over_prediction"] == pytest.approx(1.0, rel=0.2)
    assert b_verdict({0: _memory(k0=0.9)}, 10.0)["verdict"] == N  # used batch not below unseen ones
    assert b_verdict({0: _memory(decay=1e6)}, 10.0)["verdict"] == N  # no decay within the horizon


def _levels(losses, dists, found=True):
    return {
        "plateau": {"found": found},
        "levels": [
            {"lr": lr, "train_loss": a, "distance_rms": d}
            for lr, a, d in zip((0.01, 0.05, 0.1), losses, dists)
        ],
    }


def test_c_verdict():
    seeds = {s: _levels((0.2, 0.3, 0.4), (1.0, 2.0, 3.0)) for s in range(3)}
    v = c_verdict(seeds)
    assert v["verdict"] == R and v["train_loss_linear_fit"]["r2"] == pytest.approx(1.0, abs=0.05)
    seeds[1] = _levels((0.2, 0.3, 0.4), (1.0, 2.0, 3.0), found=False)
    assert c_verdict(seeds)["verdict"] == I
    seeds[1] = _levels((0.4, 0.3, 0.2), (1.0, 2.0, 3.0))
    assert c_verdict(seeds)["verdict"] == N


def _pair(same, orders):
    return {
        "same_batches": {"distance": same},
        "different_orders": {"distance": orders},
        "replay_relative_error": 0.0,
    }


def test_d_verdict():
    ok = {s: _pair([3.0, 2.5, 2.2, 2.0], [0.0, 1.0, 1.4, 1.5]) for s in range(3)}
    assert d_verdict(ok)["verdict"] == R
    ok[2] = _pair([3.0, 3.1, 3.2, 3.3], [0.0, 1.0, 1.4, 1.5])
    assert d_verdict(ok)["verdict"] == N
    grow = {s: _pair([3.0, 2.0, 1.5, 1.0], [0.0, 0.5, 1.0, 2.0]) for s in range(3)}
    assert d_verdict(grow)["verdict"] == N


def _e_seed(gains, half_gain, last=0.85):
    return {
        "last_raw": {"acc": last - 0.05, "loss": 0.5},
        "last_recal": {"acc": last, "loss": 0.4},
        "lr_half_raw": {"acc": last, "loss": 0.4},
        "lr_half_recal": {"acc": last + half_gain, "loss": 0.35},
        "two_point": {k: {"acc": last + g, "loss": 0.4 - g} for k, g in gains.items()},
    }


def test_e_verdict():
    seeds = {s: _e_seed({25: 0.002 + 0.0005 * s, 400: 0.010 + 0.001 * s}, 0.011) for s in range(3)}
    assert e_verdict(seeds, in_plateau=True)["verdict"] == R
    assert e_verdict(seeds, in_plateau=False)["verdict"] == I
    assert (
        e_verdict(worse := {s: _e_seed({25: 0.0, 400: -0.01}, 0.011) for s in range(3)}, False)["verdict"]
        == I
    )
    assert not e_verdict(worse, in_plateau=False)["checks"]["gain at the largest gap > 0 (2 SE over seeds)"]
    worse = {s: _e_seed({25: 0.0, 400: -0.01 - 0.001 * s}, 0.011) for s in range(3)}
    assert e_verdict(worse, in_plateau=True)["verdict"] == N
    far = {s: _e_seed({25: 0.002, 400: 0.010 + 0.0005 * s}, 0.05) for s in range(3)}
    assert e_verdict(far, in_plateau=True)["verdict"] == N  # two-point far from the lr/2 run


def _f_seed(to_pred, to_const, ema=0.30, runs=(0.30, 0.32, 0.28)):
    track = {"to_predicted": to_pred, "to_constant_lr": to_const}
    out = {f"{a}_track_{m}": track for a in ("ema", "swa") for m in ("acc", "loss")}
    steps = (100, 200)
    out["ema_loss"] = dict.fromkeys(steps, ema)
    for key, value in zip(("reduced_loss", "reduced_2x_loss", "reduced_half_loss"), runs):
        out[key] = dict.fromkeys(steps, value)
    return out


def test_f_verdict():
    assert f_verdict({s: _f_seed(0.01, 0.1) for s in range(3)}, in_plateau=True)["verdict"] == R
    assert f_verdict({s: _f_seed(0.09, 0.1) for s in range(3)}, in_plateau=True)["verdict"] == N
    assert f_verdict({s: _f_seed(0.01, 0.1) for s in range(3)}, in_plateau=False)["verdict"] == I
    assert f_verdict({s: _f_seed(0.09, 0.1) for s in range(3)}, in_plateau=False)["verdict"] == I


def test_f_verdict_needs_the_ema_nearer_the_predicted_run_than_2x_and_half():
    # tracks the predicted run closely, but a run at half the predicted lr matches it even better
    nearer_half = {s: _f_seed(0.01, 0.1, ema=0.285) for s in range(3)}
    v = f_verdict(nearer_half, in_plateau=True)
    assert v["verdict"] == N and v["ema_bracket"]["nearest"] == "half"
    missing = {s: {k: v for k, v in _f_seed(0.01, 0.1).items() if k != "reduced_2x_loss"} for s in range(3)}
    assert f_verdict(missing, in_plateau=True)["verdict"] == I  # the 2x run is missing: undecided


def _g_seed(cos_at):
    lrs = (0.0125, 0.05, 0.1)
    points = [{"lr": lr, "cosine_mean": c} for lr, c in zip(lrs, cos_at)]
    return {"points": points, "loglog_slope": loglog_slope(lrs, cos_at)}


def test_g_verdict():
    sqrt = [0.2 * math.sqrt(lr / 0.1) for lr in (0.0125, 0.05, 0.1)]
    assert g_verdict({s: _g_seed(sqrt) for s in range(3)})["verdict"] == R
    assert g_verdict({s: _g_seed(sqrt[::-1]) for s in range(3)})["verdict"] == N
    flat = [0.2, 0.201, 0.202]
    assert g_verdict({s: _g_seed(flat) for s in range(3)})["verdict"] == N


def test_reproduce_command_writes_results_and_the_claims_report(tmp_path, capsys):
    from trajlab import cli

    assert cli.main(["reproduce", "H", "--budget", "tiny", "--out", str(tmp_path), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    report = tmp_path / "tiny" / "report.html"
    assert (tmp_path / "tiny" / "claim_H.json").is_file() and report.is_file()
    assert f"report: {report.resolve()}" in printed
    page = report.read_text()
    assert "<h3 id='claim-H'>Claim H: " in page and page.count("<img ") == 1


@pytest.mark.parametrize("name", claims.BUDGET_NAMES)
def test_every_budget_is_consistent_with_its_preset(name):
    """Gaps are multiples of the snapshot spacing and >= 3 fit the shortest window; claim D's two starts are
    checkpoints; the plateau test has enough logged points; the lr is constant."""
    b = get_budget(name)
    cfg = base_spec(b, 0).config()
    snap, ckpt = cfg.record.snapshots["every_steps"], cfg.record.checkpoint_every_steps
    steps = cfg.train.steps
    assert cfg.schedule.name == "constant"
    assert all(k % snap == 0 for k in b.gaps_steps)
    shortest_window = steps - int(steps * (1 - b.min_window_fraction) // ckpt * ckpt)  # as shared_window
    assert len([k for k in b.gaps_steps if k <= shortest_window]) >= 3  # longer gaps are skipped
    assert b.pair_offset_steps % ckpt == 0
    assert steps // cfg.train.log_every_steps >= 2 * b.plateau_windows
