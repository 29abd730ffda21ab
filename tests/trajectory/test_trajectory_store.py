"""TrajectoryStore and verify(): every kind of damage is found and named; summaries; no pickle anywhere."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn
from trajectory_fakes import recording_trainer, tiny_model

import trajlab.trajectory
from trajlab.trajectory import TrajectoryError, TrajectoryStore, format_summary, summarize_run, verify_run


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("recorded")
    recording_trainer(run, 12, schedule={"every_steps": 3}, chunk_steps=4).fit()
    (run / "metrics.jsonl").write_text(
        "".join(
            json.dumps({"kind": "train", "step": s, "train_loss": 1.0 / s, "wall_s": 0.1}) + "\n"
            for s in range(1, 13)
        )
    )
    return run


@pytest.fixture
def run(recorded: Path, tmp_path: Path) -> Path:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(recorded, copy)
    return copy


def _snapshot(run: Path, step: int) -> Path:
    return run / "trajectory" / "snapshots" / f"step_{step:09d}.safetensors"


def _truncate(run: Path) -> None:
    path = _snapshot(run, 6)
    path.write_bytes(path.read_bytes()[:-10])


def _flip_byte(run: Path) -> None:
    path = _snapshot(run, 6)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))


def _delete(run: Path) -> None:
    _snapshot(run, 6).unlink()


def _dangling_line(run: Path) -> None:
    manifest = run / "trajectory" / "manifest.jsonl"
    line = json.loads(manifest.read_text().splitlines()[-1])
    line.update(step=99, file="snapshots/step_000000099.safetensors")
    with open(manifest, "a") as handle:
        handle.write(json.dumps(line) + "\n")


def _path_escape(run: Path) -> None:
    manifest = run / "trajectory" / "manifest.jsonl"
    line = json.loads(manifest.read_text().splitlines()[-1])
    line.update(file="../../../etc/passwd")
    with open(manifest, "a") as handle:
        handle.write(json.dumps(line) + "\n")


def _batch_gap(run: Path) -> None:
    (run / "trajectory" / "batches" / "chunk_000000005.bin").unlink()


def _batch_corrupt(run: Path) -> None:
    path = run / "trajectory" / "batches" / "chunk_000000001.bin"
    data = bytearray(path.read_bytes())
    data[60] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "kind", "step", "file_part"),
    [
        (_truncate, "size", 6, "step_000000006"),
        (_flip_byte, "corrupt", 6, "step_000000006"),
        (_delete, "missing", 6, "step_000000006"),
        (_dangling_line, "missing", 99, "step_000000099"),
        (_path_escape, "manifest", None, "manifest.jsonl"),
        (_batch_gap, "batch-gap", 5, "batches"),
        (_batch_corrupt, "batch-corrupt", None, "chunk_000000001.bin"),
    ],
)
def test_verify_finds_damage(
    run: Path, damage: Callable[[Path], None], kind: str, step: int | None, file_part: str
) -> None:
    assert verify_run(run).ok
    damage(run)
    report = verify_run(run)
    assert not report.ok
    assert any(p.kind == kind and p.step == step and file_part in p.file for p in report.errors), (
        report.lines()
    )
    assert report.lines()[0].startswith("DAMAGED")
    assert any(file_part in line for line in report.lines()[1:])


def test_wrong_version_is_found_and_refused(run: Path) -> None:
    (run / "trajectory" / "format.json").write_text(
        json.dumps({"format": "trajlab-trajectory", "version": 2})
    )
    report = verify_run(run)
    assert not report.ok and report.errors[0].kind == "format"
    assert "version 2" in report.lines()[1]
    with pytest.raises(TrajectoryError, match=r"format\.json: written by trajlab-trajectory version 2"):
        TrajectoryStore(run)


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(TrajectoryError, match="is not a trajlab run directory"):
        TrajectoryStore(tmp_path)


def test_load_errors_name_file_and_step(run: Path) -> None:
    store = TrajectoryStore(run)
    with pytest.raises(TrajectoryError, match=r"no snapshot of step 7 \(5 snapshots, steps 0\.\.12\)"):
        store.load(7)
    _truncate(run)
    with pytest.raises(
        TrajectoryError, match=r"step_000000006\.safetensors: snapshot of step 6 has \d+ bytes"
    ):
        store.load(6)
    _delete(run)
    with pytest.raises(TrajectoryError, match=r"step_000000006\.safetensors: snapshot of step 6 is missing"):
        store.load(6)


def test_check_compatible_names_the_mismatch(run: Path) -> None:
    store = TrajectoryStore(run)
    store.check_compatible(tiny_model())
    wrong = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3)
    )
    with pytest.raises(TrajectoryError) as info:
        store.check_compatible(wrong, step=3)
    message = str(info.value)
    assert "step_000000003.safetensors: snapshot of step 3 does not fit Sequential" in message
    assert "0.weight: file [4, 1, 3, 3] vs model [8, 1, 3, 3]" in message
    with pytest.raises(TrajectoryError, match="tensors missing from the file"):
        store.check_compatible(nn.Sequential(tiny_model(), nn.Linear(3, 3)))


def test_summary_lists_steps_sizes_and_metrics(run: Path) -> None:
    summary = summarize_run(run)
    traj = summary["trajectory"]
    assert traj["snapshots"] == 5 and traj["steps"] == "0..12 every 3 (5)"
    assert traj["batch_log_range"] == [1, 12]
    assert summary["metrics"]["rows"] == 12
    assert [r["step"] for r in summary["metrics"]["tail"]] == [10, 11, 12]
    json.dumps(summary)
    text = format_summary(summary)
    assert (
        "snapshots: 5 (float32)" in text
        and "steps: 0..12 every 3 (5)" in text
        and "tail: kind=train, step=12" in text
    )


def test_snapshot_files_are_safetensors_not_pickle(run: Path) -> None:
    for path in (run / "trajectory" / "snapshots").iterdir():
        data = path.read_bytes()
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        assert json.loads(header["__metadata__"]["trajlab"])["format"] == "trajlab-trajectory"
    # Library code never unpickles: no pickle import, and every torch.load is weights_only=True.
    source_dir = Path(trajlab.trajectory.__file__).parent
    for source in source_dir.glob("*.py"):
        text = source.read_text()
        assert "import pickle" not in text and "pickle.load" not in text, source
        assert text.count("torch.load(") == text.count("weights_only=True)"), source


def test_store_loads_onto_device_and_dtype(run: Path) -> None:
    state = TrajectoryStore(run).load(3, device=torch.device("cpu"), dtype=torch.float64)
    assert state["0.weight"].dtype == torch.float64 and state["1.num_batches_tracked"].dtype == torch.int64


def test_manifest_out_of_order_and_duplicates_are_errors(run: Path) -> None:
    manifest = run / "trajectory" / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join([lines[1], lines[0], *lines[2:], lines[2]]) + "\n")
    kinds = {(p.kind, p.message.split(" (")[0]) for p in verify_run(run).errors}
    assert ("manifest", "lines are not in step order") in kinds
    assert ("manifest", "step 6 listed twice") in kinds


def test_store_fits_the_protocol_of_post_hoc_averaging(run: Path) -> None:
    # post-hoc averaging codes against a structural protocol; the store must satisfy it (the probes'
    # protocol, which also rebuilds batches, is RecordedRun's: tests/runs/test_recorded.py).
    import inspect

    from trajlab.averaging.post_hoc import SnapshotReader

    store = TrajectoryStore(run)
    for protocol in (SnapshotReader,):
        for name, member in inspect.getmembers(protocol, inspect.isfunction):
            if name.startswith("_"):
                continue
            wanted = list(inspect.signature(member).parameters)
            assert (
                list(inspect.signature(getattr(store, name)).parameters)[: len(wanted) - 1] == wanted[1:]
            ), name
