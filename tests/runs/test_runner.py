"""The training engine end to end on tiny synthetic runs: determinism, logged batches, callbacks,
divergence, resume at the engine level, and the run directory's files."""

from __future__ import annotations

import json

import pytest
import torch

from trajlab.config import resolve_config
from trajlab.data import BatchSampler
from trajlab.runs import build
from trajlab.runs.runner import RunDirError, run_training
from trajlab.train.callbacks import CallbackBase
from trajlab.train.engine import Trainer, TrainingDiverged
from trajlab.train.metrics import TIME_FIELDS, read_metrics


class Capture(CallbackBase):
    name = "capture"

    def __init__(self) -> None:
        self.indices: dict[int, torch.Tensor] = {}
        self.seeds: dict[int, int] = {}
        self.hooks: list[tuple[str, int]] = []

    def on_train_start(self, ctx):
        self.hooks.append(("start", ctx.step))

    def on_step(self, ctx):
        self.indices[ctx.step] = ctx.batch_indices.clone()
        self.seeds[ctx.step] = ctx.aug_seed
        self.hooks.append(("step", ctx.step))

    def on_eval(self, ctx):
        self.hooks.append(("eval", ctx.step))
        return {"capture/steps_seen": float(len(self.indices))}

    def on_step_end(self, ctx):
        self.hooks.append(("end_step", ctx.step))

    def on_train_end(self, ctx):
        self.hooks.append(("end", ctx.step))


def _strip_time(rows):
    return [
        {k: v for k, v in r.items() if k not in TIME_FIELDS and not k.startswith("capture/")} for r in rows
    ]


def test_same_seed_bit_identical_metrics_and_logged_batches(tmp_path, tiny_overrides):
    cfg = resolve_config(None, None, tiny_overrides)
    cap = Capture()
    a = run_training(cfg, tmp_path / "a", extra_callbacks=[cap])
    b = run_training(cfg, tmp_path / "b")
    ra, rb = read_metrics(tmp_path / "a" / "metrics.jsonl"), read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert _strip_time(ra) == _strip_time(rb)  # bit-identical floats, not approximately equal
    assert [r["step"] for r in ra if r["kind"] == "eval"] == [6, 12]
    assert ra[-1]["capture/steps_seen"] == 12.0
    # Logged indices are what the sampler rebuilds from the seed alone.
    sampler = BatchSampler(256, 32, cfg.train.seed)
    for step, idx in cap.indices.items():
        assert torch.equal(idx, sampler.indices(step))
        assert cap.seeds[step] == sampler.aug_seed(step)
    assert a.result.steps_done == 12
    assert _strip_time([b.result.final_metrics]) == _strip_time([a.result.final_metrics])
    # hook order of one step with an eval: on_step, then on_eval, then on_step_end
    i = cap.hooks.index(("step", 6))
    assert cap.hooks[i : i + 3] == [("step", 6), ("eval", 6), ("end_step", 6)]
    assert cap.hooks[0] == ("start", 0) and cap.hooks[-1] == ("end", 12)


def test_different_seed_differs(tmp_path, tiny_overrides):
    run_training(resolve_config(None, None, tiny_overrides), tmp_path / "a")
    run_training(resolve_config(None, None, [*tiny_overrides, "train.seed=1"]), tmp_path / "b")
    la = [r["train_loss"] for r in read_metrics(tmp_path / "a" / "metrics.jsonl") if r["kind"] == "train"]
    lb = [r["train_loss"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl") if r["kind"] == "train"]
    assert la != lb


def test_run_directory_files(tmp_path, tiny_overrides):
    out = tmp_path / "run"
    run_training(resolve_config(None, None, tiny_overrides), out, command=["trajlab", "train"])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["optim"]["lr"] == 0.05 and cfg["data"]["name"] == "synthetic"
    prov = json.loads((out / "provenance.json").read_text())
    for key in ("git", "torch", "python", "device", "seed", "command", "trajlab"):
        assert key in prov
    assert prov["command"] == ["trajlab", "train"]
    rows = read_metrics(out / "metrics.jsonl")
    train_row = next(r for r in rows if r["kind"] == "train")
    assert {"step", "epoch", "lr", "train_loss", "wall_s", "images_per_s"} <= set(train_row)
    eval_row = next(r for r in rows if r["kind"] == "eval")
    assert {"test_loss", "test_acc"} <= set(eval_row)
    assert json.loads((out / "summary.json").read_text())["status"] == "complete"


def test_refuses_dir_with_other_run_and_writes_nothing(tmp_path, tiny_overrides):
    out = tmp_path / "run"
    run_training(resolve_config(None, None, tiny_overrides), out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(RunDirError, match="already holds a different run"):
        run_training(resolve_config(None, None, [*tiny_overrides, "optim.lr=0.01"]), out)
    with pytest.raises(RunDirError, match="already holds this run"):
        run_training(resolve_config(None, None, tiny_overrides), out)
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert before == after


def test_divergence_stops_with_clear_message(tmp_path, tiny_overrides):
    cfg = resolve_config(None, None, [*tiny_overrides, "model.name=mlp", "model.width=null", "optim.lr=1e12"])
    with pytest.raises(
        TrainingDiverged, match=r"loss became (nan|inf) at step \d+ \(lr 1e\+12\); lower optim.lr"
    ):
        run_training(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "metrics.jsonl").exists()
    assert not (tmp_path / "run" / "summary.json").exists()


def _trainer(cfg, total_steps=None):
    ds = build.build_train_data(cfg)
    test = build.build_test_data(cfg)
    torch.manual_seed(cfg.train.seed)
    model = build.build_model_for(cfg, ds)
    batches = build.DatasetBatches(
        ds,
        cfg.data,
        batch_size=cfg.train.batch_size,
        seed=cfg.train.seed,
        device=torch.device("cpu"),
        channels_last=False,
    )
    opt = build.build_optimizer_for(cfg, model)
    steps = total_steps or build.total_steps_for(cfg, len(ds))

    def evaluate(m):
        from trajlab.train.evaluate import evaluate_model

        return evaluate_model(m, lambda: build.iterate_eval(test, 64))

    return Trainer(
        model, opt, build.build_schedule_for(cfg, steps), batches, evaluate, total_steps=steps, progress=False
    )


def test_engine_state_dict_resume_is_exact(tiny_overrides):
    cfg = resolve_config(None, None, [*tiny_overrides, "optim.nesterov=true"])
    full = _trainer(cfg)
    full.fit()
    half = _trainer(cfg)
    half.total_steps = 5
    half.fit()
    state = half.state_dict()
    rest = _trainer(cfg)
    rest.load_state_dict(state)
    assert rest.step == 5
    rest.fit()
    for (k, a), b in zip(full.model.state_dict().items(), rest.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_adamw_and_schedules_train(tmp_path, tiny_overrides):
    cfg = resolve_config(
        None,
        None,
        [
            *tiny_overrides,
            "optim.name=adamw",
            "optim.lr=0.003",
            "schedule.name=cosine",
            "schedule.warmup_steps=3",
        ],
    )
    out = run_training(cfg, tmp_path / "run")
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    assert rows[0]["lr"] == pytest.approx(0.003)  # step 3: end of warmup
    assert rows[-1]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert out.result.steps_done == 12


def test_branch_from_checkpoint_sees_the_same_batches(tmp_path, tiny_overrides):
    from trajlab.trajectory import TrajectoryStore

    rec = ["record.enabled=true", "record.snapshots={every_steps = 3}", "record.checkpoint_every_steps=6"]
    rec.append("record.keep_checkpoints=5")
    base = resolve_config(None, None, [*tiny_overrides, *rec])
    run_training(base, tmp_path / "base")
    # Same config: the branch continues exactly like the base run.
    run_training(base, tmp_path / "same", branch_from=(tmp_path / "base", 6))
    # Half the lr from step 6 on, fed the identical batches.
    half = resolve_config(None, None, [*tiny_overrides, *rec, "optim.lr=0.025"])
    run_training(half, tmp_path / "half", branch_from=(tmp_path / "base", 6))
    sb, ss, sh = (TrajectoryStore(tmp_path / d) for d in ("base", "same", "half"))
    assert ss.steps() == sh.steps() == [6, 9, 12]
    for step in (7, 12):
        assert torch.equal(sb.batch_indices(step), sh.batch_indices(step))
        assert sb.aug_seed(step) == sh.aug_seed(step)
    for step in (6, 9, 12):
        for k, v in sb.load(step).items():
            assert torch.equal(v, ss.load(step)[k]), (step, k)
    assert not torch.equal(sb.load(12)["fc.weight"], sh.load(12)["fc.weight"])
    assert json.loads((tmp_path / "half" / "branch.json").read_text())["source_step"] == 6
    with pytest.raises(RunDirError, match="cannot branch"):
        run_training(half, tmp_path / "bad", branch_from=(tmp_path / "base", 5))


def test_online_probes_during_training(tmp_path, tiny_overrides):
    cfg = resolve_config(None, None, [*tiny_overrides, "probes.every_steps=6", "probes.heldout_batches=1"])
    run_training(cfg, tmp_path / "run")
    lines = (tmp_path / "run" / "probes" / "online.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["step"] for r in rows] == [6, 12]
    assert all("lr_star" in json.dumps(r) for r in rows)
