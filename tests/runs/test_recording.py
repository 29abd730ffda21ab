"""trajlab.record on a plain PyTorch loop: the exact batch of every step, resume bit for bit (also after
SIGKILL at random points), unfinished runs, dict batches, refusals."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from loop_fixtures import (
    dict_loss,
    make_data,
    make_dict_data,
    make_dict_model,
    make_model,
    make_seeded_data,
    run_loop,
)
from torch.utils.data import DataLoader

import trajlab
from trajlab.averaging import EMA
from trajlab.runs import RecordedRun
from trajlab.runs.recording_state import RecordingError
from trajlab.train.metrics import TIME_FIELDS
from trajlab.trajectory import verify_run

HERE = Path(__file__).resolve().parent


def _same_tree(a: Path, b: Path, sub: str) -> None:
    files = sorted(p.relative_to(a) for p in (a / sub).rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in (b / sub).rglob("*") if p.is_file())
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIME_FIELDS} for r in rows]


def _final_state(run: Path) -> dict:
    last = sorted((run / "checkpoints").glob("ckpt_*.pt"))[-1]
    state = torch.load(last, weights_only=True)
    return {"model": state["model"], "averages": state["callbacks"]["averaging"], "opt": state["optimizer"]}


def _assert_equal(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_equal(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_equal(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("drop_last", [False, True])
def test_every_step_batch_is_rebuilt_exactly(tmp_path, drop_last) -> None:
    seen: list = []
    run_loop(str(tmp_path / "run"), seen=seen, drop_last=drop_last, batch_size=48)
    run = RecordedRun(tmp_path / "run")
    per_epoch = 250 // 48 if drop_last else -(-250 // 48)
    assert run.batch_steps == list(range(1, 3 * per_epoch + 1)) and len(seen) == 3 * per_epoch
    for step, (x, y) in enumerate(seen, 1):
        got = run.batch_record(step)
        assert torch.equal(got.data[0], x) and torch.equal(got.data[1], y), step
    # shuffled: the epochs see different orders
    assert not torch.equal(run.batch_indices(1), run.batch_indices(per_epoch + 1))
    assert verify_run(run.run_dir).clean and run.finished and run.kind == "loop"


def test_gradient_accumulation_logs_every_batch_of_a_step(tmp_path) -> None:
    seen: list = []
    run_loop(str(tmp_path / "run"), seen=seen, accumulate=2, epochs=1)
    run = RecordedRun(tmp_path / "run")
    assert run.batch_steps == list(range(1, 5))  # 8 batches, 4 updates (the 250 % 32 tail is a 9th batch)
    x, y = run.batch(2)
    assert torch.equal(x, torch.cat([seen[2][0], seen[3][0]])) and torch.equal(
        y, torch.cat([seen[2][1], seen[3][1]])
    )


def test_worker_processes_and_seeded_augmentation(tmp_path) -> None:
    seen: list = []
    run_loop(str(tmp_path / "run"), seen=seen, num_workers=2, epochs=1, data=make_seeded_data)
    run = RecordedRun(tmp_path / "run")
    assert run.recipe.seeded_augmentation
    for step, (x, y) in enumerate(seen, 1):
        rebuilt = run.batch(step)
        assert torch.equal(rebuilt[0], x) and torch.equal(rebuilt[1], y), step
    plain = make_data()[0][int(run.batch_indices(1)[0])][0]
    assert not torch.equal(plain, seen[0][0][0])  # the augmentation did something


def test_resume_after_stopping_is_bit_identical(tmp_path) -> None:
    run_loop(str(tmp_path / "reference"))
    run = tmp_path / "run"
    for stop in (5, 11, 17):
        with pytest.raises(SystemExit):
            run_loop(str(run), stop_at=stop)
        assert not verify_run(run).clean and verify_run(run).ok  # unfinished, undamaged
    run_loop(str(run))
    _same_tree(tmp_path / "reference", run, "trajectory")
    assert _metrics(run) == _metrics(tmp_path / "reference")
    _assert_equal(_final_state(run), _final_state(tmp_path / "reference"))


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_is_bit_identical(tmp_path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocess: float sums depend on the thread count
    try:
        run_loop(str(tmp_path / "reference"))
    finally:
        torch.set_num_threads(threads)
    run = tmp_path / "run"
    rng = random.Random(7)
    cmd = [sys.executable, str(HERE / "loop_fixtures.py"), str(run)]
    for kill_at in sorted(rng.sample(range(2, 23), 4)):  # each run resumes past the previous kill
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=HERE)
        for line in proc.stdout:
            if line.strip() in (f"step {kill_at}", "done"):
                break
        proc.kill()
        proc.wait()
        report = verify_run(run)
        assert report.ok and not report.clean
    subprocess.run(cmd, check=True, capture_output=True, cwd=HERE, timeout=300)
    _same_tree(tmp_path / "reference", run, "trajectory")
    assert _metrics(run) == _metrics(tmp_path / "reference")
    _assert_equal(_final_state(run), _final_state(tmp_path / "reference"))
    assert verify_run(run).clean


def test_dict_batches_through_the_loss_hook(tmp_path) -> None:
    model = make_dict_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = DataLoader(make_dict_data()["train"], batch_size=25, shuffle=True)
    with trajlab.record(
        tmp_path / "run",
        model,
        opt,
        loss_fn=dict_loss,
        snapshots=2,
        averages=[EMA(0.8)],
        model_factory=make_dict_model,
        data_factory=make_dict_data,
    ) as rec:
        for batch in rec.batches(loader, epochs=2):
            loss = dict_loss(model, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
    run = RecordedRun(tmp_path / "run")
    batch = run.batch(3)
    assert set(batch) == {"inputs", "labels"} and batch["inputs"].shape == (25, 6)
    raw, recal = run.evaluate(run.snapshot_steps[-1], "raw"), run.evaluate(run.snapshot_steps[-1])
    assert recal.bn == "recalibrated" and raw.bn == "running"
    assert 0 < recal.loss < 1 and 0.5 < recal.acc <= 1 and raw.loss != recal.loss
    assert len(run.heldout_batches(1)[0]["labels"]) == 25


def test_refusals_say_what_to_do(tmp_path) -> None:
    run_loop(str(tmp_path / "done"), epochs=1)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with (
        pytest.raises(RecordingError, match="finished recording"),
        trajlab.record(tmp_path / "done", model, opt),
    ):
        pass
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(RecordingError, match="not empty"), trajlab.record(tmp_path / "other", model, opt):
        pass
    with pytest.raises(ValueError, match="snapshots must be"):
        trajlab.record(tmp_path / "x", model, opt, snapshots=0)
    with pytest.raises(TypeError, match="optimizer must be"):
        trajlab.record(tmp_path / "x", model, "sgd")
    assert not (tmp_path / "x").exists()  # nothing written by a refused call
    rec = trajlab.record(tmp_path / "y", model, opt)
    with pytest.raises(RecordingError, match="inside its with-block"):
        next(rec.batches(DataLoader(make_data()[0], batch_size=8)))


def _torchrun(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(HERE / "ddp_loop_worker.py"),
        *args,
    ]
    env = {
        **__import__("os").environ,
        "PYTHONPATH": f"{HERE}:{HERE.parents[1] / 'src'}",
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=HERE, env=env)


@pytest.mark.slow
def test_ddp_recording_logs_the_global_batch(tmp_path) -> None:
    proc = _torchrun(str(tmp_path / "run"), str(tmp_path / "seen"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    seen = [torch.load(tmp_path / f"seen.rank{r}.pt", weights_only=True) for r in (0, 1)]
    run = RecordedRun(tmp_path / "run")
    assert run.batch_steps == list(range(1, len(seen[0]) + 1)) and len(seen[0]) == 2 * 8
    for step, (a, b) in enumerate(zip(*seen), 1):
        x, y = run.batch(step)
        assert torch.equal(x, torch.cat([a[0], b[0]])) and torch.equal(y, torch.cat([a[1], b[1]])), step
    assert verify_run(run.run_dir).clean and run.recipe.world_size == 2


@pytest.mark.slow
def test_ddp_a_write_error_on_rank0_stops_every_rank(tmp_path) -> None:
    proc = _torchrun(str(tmp_path / "run"), str(tmp_path / "seen"), "3", timeout=120)
    assert proc.returncode != 0
    failed = [line for line in proc.stdout.splitlines() if "failed after" in line]
    assert len(failed) == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert all(float(line.split("after ")[1].split("s")[0]) < 30 for line in failed)
