"""Checkpoints: weights_only loading, fallback past a damaged latest file, pruning, non-plain state."""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

import pytest
import torch
from trajectory_fakes import recording_trainer

from trajlab.trajectory import (
    TrajectoryError,
    list_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
    save_checkpoint,
)
from trajlab.trajectory.checkpoint import prune_checkpoints


def _state(step: int) -> dict:
    return {
        "step": step,
        "w": torch.full((3,), float(step)),
        "rng": torch.get_rng_state(),
        "meta": ["a", {"b": 1.5}],
    }


def test_round_trip_with_weights_only(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 7, _state(7), check_loadable=True)
    loaded = load_latest_checkpoint(tmp_path)
    assert loaded is not None and loaded["step"] == 7 and torch.equal(loaded["w"], torch.full((3,), 7.0))
    sha_line = (tmp_path / "checkpoints" / "ckpt_000000007.sha256").read_text()
    assert sha_line.endswith("  ckpt_000000007.pt\n")


def test_no_checkpoint_is_none(tmp_path: Path) -> None:
    assert load_latest_checkpoint(tmp_path) is None


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage-no-sha"])
def test_damaged_latest_falls_back_to_previous(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    save_checkpoint(tmp_path, 5, _state(5))
    latest = save_checkpoint(tmp_path, 10, _state(10))
    data = bytearray(latest.read_bytes())
    if damage == "truncate":
        latest.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "flip":
        data[len(data) // 2] ^= 0x01
        latest.write_bytes(bytes(data))
    else:
        latest.with_suffix(".sha256").unlink()
        latest.write_bytes(b"not a checkpoint")
    with caplog.at_level(logging.WARNING):
        state = load_latest_checkpoint(tmp_path)
    assert state is not None and state["step"] == 5
    assert "ckpt_000000010.pt" in caplog.text and "falling back" in caplog.text
    with pytest.raises(TrajectoryError, match="ckpt_000000010.pt"):
        load_checkpoint(latest)


def test_non_plain_state_is_refused_at_save(tmp_path: Path) -> None:
    class Local:
        pass

    with pytest.raises(TrajectoryError, match="cannot be loaded with weights_only=True"):
        save_checkpoint(tmp_path, 1, {"when": datetime.timedelta(days=1)}, check_loadable=True)
    with pytest.raises(TrajectoryError, match="the trainer state cannot be saved"):
        save_checkpoint(tmp_path, 1, {"thing": Local()})
    assert list_checkpoints(tmp_path) == []


def test_a_pickle_payload_is_not_executed(tmp_path: Path) -> None:
    # A checkpoint file that would run code under plain pickle: loading must refuse it, not run it.
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):  # noqa: ANN204
            return (Path.write_text, (marker, "ran"))

    (tmp_path / "checkpoints").mkdir()
    torch.save({"x": Exploit()}, tmp_path / "checkpoints" / "ckpt_000000001.pt")
    assert load_latest_checkpoint(tmp_path) is None
    assert not marker.exists()


def test_checkpointer_prunes_to_last_k_and_saves_final(tmp_path: Path) -> None:
    trainer = recording_trainer(tmp_path, 23, checkpoint_every=5)
    trainer.fit()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [20, 23]
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == [
        "ckpt_000000020.pt",
        "ckpt_000000020.sha256",
        "ckpt_000000023.pt",
        "ckpt_000000023.sha256",
    ]
    state = load_latest_checkpoint(tmp_path)
    assert state is not None and state["step"] == 23 and "recorder" in state["callbacks"]


def _problems(run: Path) -> dict[str, str]:
    from trajlab.trajectory import verify_run

    return {p.kind: p.severity for p in verify_run(run).problems}


def test_a_kill_between_checkpoint_and_its_sha256_line_is_torn_not_damage(tmp_path: Path) -> None:
    """Killed after the newest .pt and before its .sha256 line: unfinished, resumable, not damaged."""
    from trajectory_fakes import crash_trainer

    run = tmp_path / "run"
    crash_trainer(run, resume=False).fit()
    newest = list_checkpoints(run)[-1][1]
    newest.with_suffix(".sha256").unlink()
    assert _problems(run) == {"torn": "warning", "no-config": "warning"}
    (run / "summary.json").write_text("{}")  # a finished run has no excuse: damage
    assert _problems(run)["missing"] == "error"


def test_a_kill_inside_a_prune_leaves_a_note_and_the_next_prune_cleans_it(tmp_path: Path) -> None:
    """Pruning deletes the oldest .pt, then its .sha256 line; a kill in between leaves the line, which is
    older than every kept checkpoint (a note, nothing the run needs); a newer orphan line is damage."""
    from trajectory_fakes import crash_trainer

    run = tmp_path / "run"
    crash_trainer(run, resume=False).fit()
    kept = list_checkpoints(run)
    kept[0][1].unlink()
    assert _problems(run).get("pruned") == "note" and "missing" not in _problems(run)
    save_checkpoint(run, kept[-1][0] + 1, _state(kept[-1][0] + 1))
    prune_checkpoints(run, keep=2)
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == sorted(
        f"ckpt_{s:09d}.{e}" for s in (kept[-1][0], kept[-1][0] + 1) for e in ("pt", "sha256")
    )
    list_checkpoints(run)[-1][1].unlink()  # the newest .pt lost: damage
    assert _problems(run)["missing"] == "error"
