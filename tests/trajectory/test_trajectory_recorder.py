"""Recorder: snapshots, manifest, batch log, bf16, back-pressure, write errors, ranks, resume truncation."""

from __future__ import annotations

import errno
import hashlib
import json
import threading
from pathlib import Path

import pytest
import torch
from trajectory_fakes import FakeTrainer, aug_seed, batch_indices, recording_trainer, tiny_model

from trajlab.trajectory import Recorder, TrajectoryError, TrajectoryStore, layout, verify_run
from trajlab.trajectory.batchlog import BatchLogReader, BatchLogWriter, scan_chunk


def _manifest(run_dir: Path) -> list[dict]:
    text = (run_dir / "trajectory" / "manifest.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_snapshots_manifest_and_sha(tmp_path: Path) -> None:
    trainer = recording_trainer(tmp_path, 12, schedule={"every_steps": 4})
    trainer.fit()
    lines = _manifest(tmp_path)
    assert [e["step"] for e in lines] == [0, 4, 8, 12]
    for entry in lines:
        path = tmp_path / "trajectory" / entry["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
        assert path.stat().st_size == entry["bytes"]
        assert set(entry) == {"step", "epoch", "lr", "file", "sha256", "bytes", "dtype"}
    assert json.loads((tmp_path / "trajectory" / "format.json").read_text()) == {
        "format": "trajlab-trajectory",
        "version": 1,
    }
    assert verify_run(tmp_path).ok


def test_load_reproduces_model_outputs_exactly(tmp_path: Path) -> None:
    trainer = recording_trainer(tmp_path, 6, schedule={"every_steps": 3})
    trainer.fit()
    x = torch.randn(5, 1, 6, 6)
    trainer.model.eval()
    expected = trainer.model(x)
    store = TrajectoryStore(tmp_path)
    fresh = store.load_into(tiny_model(seed=99), 6).eval()
    assert torch.equal(fresh(x), expected)
    state = store.load(6)
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(state[name], tensor) and state[name].dtype == tensor.dtype


def test_iter_snapshots_streams_in_step_order(tmp_path: Path) -> None:
    recording_trainer(tmp_path, 5, schedule={"every_steps": 1}).fit()
    steps = [step for step, state in TrajectoryStore(tmp_path).iter_snapshots(steps=[4, 1, 2])]
    assert steps == [1, 2, 4]


def test_bf16_option_keeps_integer_buffers(tmp_path: Path) -> None:
    trainer = recording_trainer(tmp_path, 2, schedule={"every_steps": 2}, dtype=torch.bfloat16)
    trainer.fit()
    store = TrajectoryStore(tmp_path)
    state = store.load(2)
    assert state["0.weight"].dtype == torch.bfloat16
    assert state["1.num_batches_tracked"].dtype == torch.int64
    assert torch.equal(state["0.weight"], trainer.model.state_dict()["0.weight"].to(torch.bfloat16))
    assert store.load(2, dtype=torch.float32)["1.running_var"].dtype == torch.float32
    assert store.manifest[-1].dtype == "bfloat16"


def test_batch_log_round_trip(tmp_path: Path) -> None:
    trainer = recording_trainer(tmp_path, 21, schedule={"at_steps": [21]}, chunk_steps=8)
    trainer.fit()
    store = TrajectoryStore(tmp_path)
    assert store.batch_steps() == list(range(1, 22))
    for step in (1, 8, 9, 21):
        assert torch.equal(store.batch_indices(step), batch_indices(step))
        assert store.batch_indices(step).dtype == torch.int64
        assert store.aug_seed(step) == aug_seed(step)
    assert sorted(p.name for p in (tmp_path / "trajectory" / "batches").iterdir()) == [
        "chunk_000000001.bin",
        "chunk_000000009.bin",
        "chunk_000000017.bin",
    ]
    with pytest.raises(TrajectoryError, match="no batch-log record for step 22"):
        store.batch_indices(22)


def test_batch_log_int64_when_indices_do_not_fit_int32(tmp_path: Path) -> None:
    writer = BatchLogWriter(tmp_path, chunk_steps=4)
    small, large = torch.tensor([0, 5, 2**31 - 1]), torch.tensor([2**40, 3])
    writer.append(1, small, 11)
    writer.append(2, large, -5)
    writer.close()
    records = scan_chunk((tmp_path / "chunk_000000001.bin").read_bytes()).records
    assert [r.itemsize for r in records] == [4, 8]
    reader = BatchLogReader(tmp_path)
    assert torch.equal(reader.indices(1), small) and torch.equal(reader.indices(2), large)
    assert reader.aug_seed(2) == -5


def test_rank_nonzero_writes_nothing(tmp_path: Path) -> None:
    trainer = FakeTrainer([Recorder(tmp_path, {"every_steps": 1})], 3, rank=1)
    trainer.fit()
    assert not (tmp_path / "trajectory").exists()


def test_fresh_start_refuses_an_existing_trajectory(tmp_path: Path) -> None:
    recording_trainer(tmp_path, 2).fit()
    with pytest.raises(TrajectoryError, match="already holds a trajectory"):
        recording_trainer(tmp_path, 2).fit()


def test_unwritable_run_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "run"
    blocker.write_text("a file where the run directory should be")
    with pytest.raises(TrajectoryError, match="cannot create the trajectory directory"):
        recording_trainer(blocker, 2).fit()


def test_write_error_surfaces_at_next_step_and_keeps_completed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = layout.write_file_atomic

    def disk_fills_at_step_3(path: Path, data: bytes) -> None:
        if path.name == "step_000000003.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(layout, "write_file_atomic", disk_fills_at_step_3)
    trainer = recording_trainer(tmp_path, 10, schedule={"every_steps": 1}, queue_size=1)
    with pytest.raises(TrajectoryError) as info:
        trainer.fit()
    message = str(info.value)
    assert "step_000000003.safetensors" in message and "No space left on device" in message
    assert trainer.step <= 6  # stopped within a few steps (queue of 1), not at the end
    report = verify_run(tmp_path)
    assert report.ok, report.lines()
    assert [e.step for e in TrajectoryStore(tmp_path).manifest] == [0, 1, 2]


def test_back_pressure_blocks_training_when_queue_is_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    real_write = layout.write_file_atomic

    def slow_write(path: Path, data: bytes) -> None:
        gate.wait(timeout=10)
        real_write(path, data)

    monkeypatch.setattr(layout, "write_file_atomic", slow_write)
    trainer = recording_trainer(tmp_path, 10, schedule={"every_steps": 1}, queue_size=2)
    done = threading.Thread(target=trainer.fit)
    done.start()
    done.join(timeout=1.0)
    # theta_0 is held by the writer, 2 wait in the queue, the trainer blocks handing over the next one.
    assert done.is_alive() and trainer.step <= 3
    gate.set()
    done.join(timeout=20)
    assert not done.is_alive() and trainer.step == 10
    assert len(TrajectoryStore(tmp_path).steps()) == 11


def test_resume_truncates_what_a_killed_run_wrote_past_the_checkpoint(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    recording_trainer(reference, 20, checkpoint_every=5, chunk_steps=8).fit()

    run = tmp_path / "run"
    recording_trainer(run, 20, checkpoint_every=5, chunk_steps=8).fit(stop_after=13)  # "killed" at 13
    # A killed writer also leaves a temporary file and an unlisted snapshot; resume cleans both.
    (run / "trajectory" / "snapshots" / ".step_000000014.safetensors.tmp").write_bytes(b"partial")
    resumed = recording_trainer(run, 20, checkpoint_every=5, chunk_steps=8, resume=True)
    assert resumed.step == 10
    resumed.fit()
    _assert_same_trajectory(reference, run)


def _assert_same_trajectory(a: Path, b: Path) -> None:
    for sub in ("trajectory/manifest.jsonl",):
        assert (a / sub).read_bytes() == (b / sub).read_bytes()
    for sub in ("trajectory/snapshots", "trajectory/batches"):
        names_a = sorted(p.name for p in (a / sub).iterdir())
        assert names_a == sorted(p.name for p in (b / sub).iterdir())
        for name in names_a:
            assert (a / sub / name).read_bytes() == (b / sub / name).read_bytes(), name


def test_resume_repairs_an_unlisted_snapshot_and_a_lost_checkpoint_snapshot(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    recording_trainer(reference, 12, checkpoint_every=5).fit()

    run = tmp_path / "run"
    recording_trainer(run, 12, checkpoint_every=5).fit(stop_after=10)
    manifest = run / "trajectory" / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    # Killed between a snapshot's rename and its manifest line (step 9), and the snapshot of the checkpoint
    # step itself (10) never written: resume lists 9 from the file and saves 10 from the restored model.
    manifest.write_text("".join(line + "\n" for line in lines if json.loads(line)["step"] not in (9, 10)))
    (run / "trajectory" / "snapshots" / "step_000000010.safetensors").unlink()
    assert verify_run(run).ok and any(p.kind == "unlisted" for p in verify_run(run).warnings)
    resumed = recording_trainer(run, 12, checkpoint_every=5, resume=True)
    assert resumed.step == 10
    resumed.fit()
    _assert_same_trajectory(reference, run)


def test_snapshot_copies_are_private_and_row_major(tmp_path: Path) -> None:
    from trajlab.trajectory.writer import copy_state_dict

    model = tiny_model().to(memory_format=torch.channels_last)
    copies, ready = copy_state_dict(model)
    assert ready is None  # CPU: nothing to wait for
    weight = model.state_dict()["0.weight"]
    assert copies["0.weight"].is_contiguous() and torch.equal(copies["0.weight"], weight)
    with torch.no_grad():
        model[0].weight.add_(1.0)  # the next optimizer step must not reach the queued copy
    assert not torch.equal(copies["0.weight"], model.state_dict()["0.weight"])
