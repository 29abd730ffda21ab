"""Crash safety: SIGKILL a recording process at random points; what is left verifies, resume is exact.

Two levels: the recorder on the fake loop of ``trajectory_fakes`` (no engine), and the whole run glue
(``trajlab.runs.runner.run_training`` with the real engine) on a tiny synthetic config.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
import torch
from trajectory_fakes import crash_trainer

from trajlab.trajectory import TrajectoryStore, verify_run

HERE = Path(__file__).parent
KILLS = 3
# Kill points are drawn from this seed; a failure names it, rerun with TRAJLAB_CRASH_SEED=<seed>.
SEED = int(os.environ.get("TRAJLAB_CRASH_SEED", "3"))


def _kill_during(lines: Iterable[str], kill: Callable[[], None], rng: random.Random) -> bool:
    """Follow a child's ``start S`` / ``step T`` lines; SIGKILL it 1..6 steps after where it started.

    The point is relative to the resume step, because a child that runs ahead of a descheduled parent
    may pass a fixed step (and the next checkpoint) before the parent reads it. Returns whether it killed.
    """
    target = None
    for line in lines:
        word, _, value = line.strip().partition(" ")
        if word == "start":
            target = int(value) + rng.randint(1, 6)
        elif word == "step" and target is not None and int(value) >= target:
            time.sleep(rng.uniform(0.0, 0.03))  # land anywhere in the next step, mid-write included
            kill()
            return True
    return False


def _kill_at(lines: Iterable[str], kill: Callable[[], None], word: str) -> bool:
    """SIGKILL the child as soon as it prints the line ``word`` (it waits for the parent's signal)."""
    for line in lines:
        if line.strip() == word:
            kill()
            return True
    return False


def _subprocess_run(
    cmd: list[str], rng: random.Random | None, timeout_s: float = 120.0, at: str | None = None
) -> bool:
    """Run ``cmd`` (printing progress lines), SIGKILLed at a random point when ``rng`` is given, or as
    soon as it prints the line ``at``."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=HERE)
    assert proc.stdout is not None
    kill = lambda: proc.send_signal(signal.SIGKILL)  # noqa: E731
    try:
        if at is not None and _kill_at(proc.stdout, kill, at):
            proc.wait(timeout=timeout_s)
            return True
        if rng is not None and _kill_during(proc.stdout, kill, rng):
            proc.wait(timeout=timeout_s)
            return True
        _, err = proc.communicate(timeout=timeout_s)
        assert proc.returncode == 0, err[-3000:]
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _assert_verifies(run: Path) -> None:
    if not (run / "trajectory" / "format.json").exists():
        return  # killed before the recorder started: nothing written yet
    report = verify_run(run)
    assert report.ok, "\n".join(report.lines())


def _assert_same_files(reference: Path, run: Path, subdirs: tuple[str, ...]) -> None:
    for sub in subdirs:
        ref, got = reference / sub, run / sub
        if ref.is_file():
            assert ref.read_bytes() == got.read_bytes(), sub
            continue
        names = sorted(p.name for p in ref.iterdir())
        assert names == sorted(p.name for p in got.iterdir()), sub
        for name in names:
            assert (ref / name).read_bytes() == (got / name).read_bytes(), f"{sub}/{name}"


@pytest.fixture
def restore_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


TRAJECTORY_FILES = (
    "trajectory/format.json",
    "trajectory/manifest.jsonl",
    "trajectory/snapshots",
    "trajectory/batches",
)


class _PipeAnnounce:
    """Writes ``step N`` lines to a pipe (the forked child's progress, for the parent to kill on)."""

    name = "announce"

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def on_train_start(self, ctx) -> None:  # noqa: ANN001
        os.write(self.fd, f"start {ctx.step}\n".encode())

    def on_step(self, ctx) -> None:  # noqa: ANN001
        os.write(self.fd, f"step {ctx.step}\n".encode())

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _fork_run(run: Path, rng: random.Random | None) -> bool:
    """Run the fake-loop recording in a forked child (no re-import); SIGKILL it at random if ``rng``."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: train, then leave without running any of pytest's teardown
        code = 1
        try:
            os.close(read_fd)
            crash_trainer(run, resume=True, extra=[_PipeAnnounce(write_fd)]).fit()
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as lines:
        killed = rng is not None and _kill_during(lines, lambda: os.kill(pid, signal.SIGKILL), rng)
        if not killed:
            lines.read()
    _, status = os.waitpid(pid, 0)
    assert killed or os.waitstatus_to_exitcode(status) == 0, "the child failed"
    return killed


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_recorder_survives_sigkill_and_resumes_exactly(tmp_path: Path, restore_threads: None) -> None:
    torch.set_num_threads(1)  # the same in parent and children: float sums depend on the thread count
    reference = tmp_path / "reference"
    crash_trainer(reference, resume=False).fit()
    run = tmp_path / "run"
    rng = random.Random(SEED)
    for _ in range(KILLS):
        assert _fork_run(run, rng), f"the run finished before the kill (TRAJLAB_CRASH_SEED={SEED})"
        _assert_verifies(run)
    assert not _fork_run(run, None)
    _assert_same_files(reference, run, TRAJECTORY_FILES)
    assert verify_run(run).ok


# ---- end to end through the engine and the run glue --------------------------------------------------
E2E_CONFIG = {
    "data": {
        "name": "synthetic",
        "pad_to": None,
        "crop_padding": 1,
        "synthetic": {"n": 128, "n_test": 64, "num_classes": 4, "size": 8, "channels": 1},
    },
    "model": {"name": "resnet20", "width": 4, "channels_last": False},
    "optim": {"lr": 0.05},
    "train": {
        "batch_size": 16,
        "steps": 30,
        "eval_every_steps": 10,
        "log_every_steps": 5,
        "device": "cpu",
        "progress": False,
        "num_threads": 1,
        "eval_batch_size": 64,
    },
    "record": {
        "enabled": True,
        "snapshots": {"every_steps": 2},
        "checkpoint_every_steps": 4,
        "keep_checkpoints": 2,
    },
}

_E2E_WORKER = """
import json, sys, time
from pathlib import Path
import torch
from trajlab.config import HostSettings, RunConfig
from trajlab.runs.runner import run_training
class Announce:
    name = "announce"
    def on_train_start(self, ctx):
        print(f"start {ctx.step}", flush=True)
    def on_step(self, ctx):
        print(f"step {ctx.step}", flush=True)
        if ctx.step == 1 and "hold-before-first-checkpoint" in sys.argv:
            print("before-first-checkpoint", flush=True)
            time.sleep(30)  # the parent kills it here
    def state_dict(self):
        return {}
    def load_state_dict(self, state):
        pass

import trajlab.runs.runner as runner
_write_run_json = runner.write_run_json
def hold_before_summary(run_dir, name, data):
    # Every callback's on_train_end (the final checkpoint included) has run, summary.json is not written.
    if name == "summary.json" and "hold-after-final-checkpoint" in sys.argv:
        print("after-final-checkpoint", flush=True)
        time.sleep(30)
    return _write_run_json(run_dir, name, data)
runner.write_run_json = hold_before_summary

run = Path(sys.argv[1])
cfg = RunConfig.from_dict(json.loads(sys.argv[2]))
# A run killed before its first checkpoint resumes too (from step 0), in place.
resume = (run / "config.json").is_file()
# As the CLI does: the run's train.num_threads is applied through the host (the library sets none itself).
host = HostSettings(set_threads=torch.set_num_threads)
run_training(None if resume else cfg, run, resume=resume, extra_callbacks=[Announce()], host=host)
print("done", flush=True)
"""


def _runner_available() -> bool:
    try:
        from trajlab.runs.runner import run_training  # noqa: F401
    except ImportError:
        return False
    return True


def _metrics_without_time(run: Path) -> list[dict]:
    from trajlab.train.metrics import TIME_FIELDS

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIME_FIELDS} for row in rows]


@pytest.mark.slow
@pytest.mark.skipif(not _runner_available(), reason="trajlab.runs.runner.run_training not available")
def test_train_sigkill_resume_matches_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_threads: None
) -> None:
    from trajlab.config import HostSettings, RunConfig
    from trajlab.runs import build
    from trajlab.runs.runner import run_training

    # Reference run, in this process, capturing every training batch as the engine receives it.
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    original_batch = build.DatasetBatches.batch

    def capturing_batch(self, step):  # noqa: ANN001, ANN202
        x, y, indices, seed = original_batch(self, step)
        captured[step] = (x.clone(), y.clone())
        return x, y, indices, seed

    monkeypatch.setattr(build.DatasetBatches, "batch", capturing_batch)
    reference = tmp_path / "reference"
    run_training(
        RunConfig.from_dict(E2E_CONFIG), reference, host=HostSettings(set_threads=torch.set_num_threads)
    )
    monkeypatch.undo()

    from trajlab.runs import RecordedRun

    recorded = RecordedRun(reference)  # rebuilds a step's batch from the logged indices and seed
    assert sorted(captured) == recorded.batch_steps == list(range(1, 31))
    for step, (x, y) in captured.items():
        x_rebuilt, y_rebuilt = recorded.batch(step)
        assert torch.equal(x_rebuilt, x) and torch.equal(y_rebuilt, y), step

    # The same run, SIGKILLed at random steps and resumed each time.
    run = tmp_path / "run"
    rng = random.Random(SEED + 8)
    cmd = [sys.executable, "-c", _E2E_WORKER, str(run), json.dumps(E2E_CONFIG)]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # Killed before its first checkpoint, then at random points, then between the final checkpoint and
    # summary.json (only the last kill point depends on the process running to the end).
    hold = "hold-before-first-checkpoint"
    assert _subprocess_run([*cmd, hold], None, at="before-first-checkpoint")
    assert not list(run.glob("checkpoints/ckpt_*")) and (run / "config.json").is_file()
    for _ in range(KILLS):
        assert _subprocess_run(cmd, rng), f"the run finished before the kill (TRAJLAB_CRASH_SEED={SEED})"
        _assert_verifies(run)
    hold = "hold-after-final-checkpoint"
    assert _subprocess_run([*cmd, hold], None, timeout_s=180, at="after-final-checkpoint")
    assert not (run / "summary.json").exists() and (run / "checkpoints" / "ckpt_000000030.pt").is_file()
    assert not _subprocess_run(cmd, None, timeout_s=180)
    from trajlab.train.metrics import TIME_FIELDS

    finals = [json.loads((r / "summary.json").read_text()) for r in (run, reference)]
    got, want = ({k: v for k, v in s["final"].items() if k not in TIME_FIELDS} for s in finals)
    assert got == want and got["test_loss"] > 0 and finals[0]["steps"] == 30

    assert verify_run(run).ok
    _assert_same_files(reference, run, TRAJECTORY_FILES)
    assert _metrics_without_time(run) == _metrics_without_time(reference)
    assert TrajectoryStore(run).steps() == list(range(0, 31, 2))
