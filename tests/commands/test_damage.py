"""Every kind of damage against every command: the right exit status, one line naming the file, no
inf/nan result written, and no intact record deleted (counted before and after, quarantine included).

Two runs are made once: a finished one (for runs verify, average, probe, report) and one stopped at
step 20 of 24 with checkpoints at 8 and 16 (for train --resume). Each case damages a fresh copy.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from trajlab.cli import main
from trajlab.config import resolve_config
from trajlab.runs import run_training
from trajlab.train.callbacks import CallbackBase
from trajlab.trajectory.batchlog import scan_chunk

OVERRIDES = [
    "data.name=synthetic",
    "data.pad_to=0",
    "data.train_subset=0",
    "data.test_subset=0",
    "data.synthetic={n = 256, n_test = 128, num_classes = 4, channels = 1, size = 16, seed = 3}",
    "model.name=resnet20",
    "model.width=4",
    "train.batch_size=32",
    "train.steps=24",
    "train.eval_every_steps=8",
    "train.log_every_steps=2",
    "train.eval_batch_size=64",
    "train.progress=false",
    "optim.lr=0.05",
    "record.enabled=true",
    "record.snapshots={every_steps = 2}",
    "record.checkpoint_every_steps=8",
    "averaging.ema_decays=[0.9]",
    "train.tensorboard=false",
]


class StopAt(CallbackBase):
    name = "stop_at"

    def on_step_end(self, ctx) -> None:  # noqa: ANN001
        if ctx.step == 20:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("damage")
    cfg = resolve_config(None, None, OVERRIDES)
    run_training(cfg, root / "finished")
    assert main(["probe", str(root / "finished"), "--line", "-q", "--batches", "1", "--max-steps", "3"]) == 0
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, root / "unfinished", extra_callbacks=[StopAt()])
    return {"finished": root / "finished", "unfinished": root / "unfinished"}


# ---- damage -----------------------------------------------------------------------------------------


def _flip(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x10
    path.write_bytes(bytes(data))


def _snapshot(run: Path, step: int = 12) -> Path:
    return run / "trajectory" / "snapshots" / f"step_{step:09d}.safetensors"


def _chunk(run: Path) -> Path:
    return sorted((run / "trajectory" / "batches").glob("chunk_*.bin"))[0]


def _flip_batch_record(run: Path, step: int = 13) -> None:
    chunk = _chunk(run)
    record = next(r for r in scan_chunk(chunk.read_bytes()).records if r.step == step)
    _flip(chunk, record.payload_offset + 1)


def _flip_metrics_row(run: Path) -> None:
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace('"step": 6', '"step": 7', 1)
    path.write_text("\n".join(lines) + "\n")


def _flip_manifest(run: Path) -> None:
    path = run / "trajectory" / "manifest.jsonl"
    lines = path.read_text().splitlines()
    lines[3] = lines[3].replace('"', "#", 1)
    path.write_text("\n".join(lines) + "\n")


def _plant_symlink(run: Path) -> None:
    elsewhere = run.parent / f"{run.name}-elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(run / "probes", ignore_errors=True)
    (run / "probes").symlink_to(elsewhere)
    chunk = _chunk(run)
    shutil.copy(chunk, elsewhere / chunk.name)
    chunk.unlink()
    chunk.symlink_to(elsewhere / chunk.name)


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    # name: (how, the file the one-line error must name)
    "snapshot-flip": (lambda r: _flip(_snapshot(r)), "step_000000012.safetensors"),
    "snapshot-truncate": (
        lambda r: _snapshot(r).write_bytes(_snapshot(r).read_bytes()[:100]),
        "step_000000012",
    ),
    "snapshot-delete": (lambda r: _snapshot(r).unlink(), "step_000000012"),
    "checkpoint-flip": (lambda r: _flip(sorted((r / "checkpoints").glob("*.pt"))[-1]), "ckpt_"),
    "checkpoint-delete": (lambda r: sorted((r / "checkpoints").glob("*.pt"))[-1].unlink(), "ckpt_"),
    "batchlog-flip": (_flip_batch_record, "chunk_"),
    "batchlog-truncate": (lambda r: _chunk(r).write_bytes(_chunk(r).read_bytes()[:200]), "chunk_"),
    "batchlog-delete": (lambda r: _chunk(r).unlink(), "batches"),
    "config-flip": (
        lambda r: (r / "config.json").write_text((r / "config.json").read_text().replace("0.05", "0.07")),
        "config.json",
    ),
    "config-delete": (lambda r: (r / "config.json").unlink(), "config.json"),
    "metrics-flip": (_flip_metrics_row, "metrics.jsonl"),
    "manifest-flip": (_flip_manifest, "manifest.jsonl"),
    "symlink": (_plant_symlink, "symlink"),
    "extra-file": (lambda r: (r / "my-notes.txt").write_text("hello"), ""),
}

# Exit status per damage and command: 0 = the command does not read what is damaged (or repairs it: a
# resume falls back to an older verified checkpoint), 1 = damage found, one line, nothing written.
EXPECTED = {
    #                    verify average probe report resume
    "snapshot-flip": (1, 1, 1, 0, 0),
    "snapshot-truncate": (1, 1, 1, 0, 0),
    "snapshot-delete": (1, 1, 1, 0, 0),
    "checkpoint-flip": (1, 0, 0, 0, 0),
    "checkpoint-delete": (1, 0, 0, 0, 0),
    "batchlog-flip": (1, 0, 1, 0, 0),
    "batchlog-truncate": (1, 0, 1, 0, 1),
    "batchlog-delete": (1, 0, 1, 0, 1),
    "config-flip": (1, 1, 1, 1, 1),
    "config-delete": (1, 1, 1, 1, 1),
    "metrics-flip": (1, 0, 0, 1, 1),
    "manifest-flip": (1, 1, 1, 0, 1),
    "symlink": (1, 0, 1, 0, 1),
    "extra-file": (0, 0, 0, 0, 0),
}
COMMANDS = ("verify", "average", "probe", "report", "resume")


def _argv(command: str, run: Path, out: Path) -> list[str]:
    return {
        "verify": ["runs", "verify", str(run)],
        "average": ["average", str(run), "--ema", "0.9", "--out", str(out / "avg.json"), "--bn-batches", "2"],
        "probe": [
            "probe",
            str(run),
            "--line",
            "-q",
            "--overwrite",
            "--batches",
            "1",
            "--max-steps",
            "3",
            "--steps",
            "12",
        ],
        "report": ["report", str(run), "--out", str(out / "report.html")],
        "resume": ["train", "--resume", str(run), "-q"],
    }[command]


def _records(run: Path) -> dict[str, int]:
    """What must never shrink: snapshot files, checkpoint files, metrics lines, batch-log bytes (in the
    run and in its quarantine)."""

    def count(pattern: str) -> int:
        return sum(1 for p in run.rglob(pattern) if not p.is_symlink())

    metrics = sum(len(p.read_text().splitlines()) for p in run.rglob("metrics.jsonl*") if p.is_file())
    batch = sum(p.stat().st_size for p in run.rglob("chunk_*") if p.is_file() and not p.is_symlink())
    return {
        "snapshots": count("step_*.safetensors"),
        "checkpoints": count("ckpt_*.pt"),
        "metrics": metrics,
        "batch_bytes": batch,
    }


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("command", COMMANDS)
def test_damage(runs, tmp_path, capsys, damage, command) -> None:
    source = runs["unfinished" if command == "resume" else "finished"]
    run = tmp_path / "run"
    shutil.copytree(source, run, symlinks=True)
    how, names = DAMAGE[damage]
    how(run)
    before = _records(run)
    out = tmp_path / "out"
    out.mkdir()
    code = main(_argv(command, run, out), environ={})
    captured = capsys.readouterr()
    expected = EXPECTED[damage][COMMANDS.index(command)]
    assert code == expected, (damage, command, captured.err[-800:], captured.out[-800:])
    if code != 0 and command != "verify":
        err = captured.err.strip()
        assert "\n" not in err and names in err, err
        assert not list(out.iterdir()), "nothing is written by a command that failed"
    if command == "verify" and code != 0:
        assert names in captured.out or damage.startswith("checkpoint"), captured.out
    if code == 0 and command == "average":
        doc = json.loads((out / "avg.json").read_text())
        assert all(math.isfinite(r["test_loss"]) for r in doc["rows"])
    after = _records(run)
    for key, n in before.items():
        assert after[key] >= n, (key, before, after)
    if damage == "symlink":
        assert [p.name for p in (tmp_path / "run-elsewhere").iterdir()] == [_chunk(source).name]
