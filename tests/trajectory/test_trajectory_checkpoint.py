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
