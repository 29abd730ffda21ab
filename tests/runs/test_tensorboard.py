"""Metrics where people look: with tensorboard installed, the engine and the recorder mirror every metric
(training loss, lr, test metrics of the last iterate and of every average) as TensorBoard scalars."""

from __future__ import annotations

import pytest
import torch
from loop_fixtures import run_loop

from trajlab.config import resolve_config
from trajlab.runs import run_training


def _scalars(run_dir) -> set[str]:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return set(acc.Tags()["scalars"])


def test_engine_writes_tensorboard_scalars(tmp_path, tiny_overrides) -> None:
    pytest.importorskip("tensorboard")
    cfg = resolve_config(None, None, [*tiny_overrides, "averaging.ema_decays=[0.9]"])
    run_training(cfg, tmp_path / "run")
    tags = _scalars(tmp_path / "run")
    for tag in ("train/train_loss", "train/lr", "eval/test_loss", "eval/test_acc", "eval/ema_0.9/test_acc"):
        assert tag in tags, (tag, sorted(tags))


def test_recorder_writes_tensorboard_scalars(tmp_path) -> None:
    pytest.importorskip("tensorboard")
    run_loop(str(tmp_path / "run"), epochs=1)
    tags = _scalars(tmp_path / "run")
    assert {"train/train_loss", "train/lr"} <= tags


def test_tensorboard_can_be_turned_off(tmp_path, tiny_overrides) -> None:
    cfg = resolve_config(None, None, [*tiny_overrides, "train.tensorboard=false"])
    run_training(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "tensorboard").exists()
    assert torch.get_num_threads() >= 1
