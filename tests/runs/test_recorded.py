"""RecordedRun: a run directory opened once. The batch of a step equals what the trainer fed it, the held-out
batches are one fixed definition, evaluate() is "recalibrate BN, then evaluate" done by hand, and it serves
the snapshot-source protocols of post-hoc averaging and the probes."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch

from trajlab.averaging import update_bn
from trajlab.config import resolve_config
from trajlab.runs import RecordedRun, RunDirError, build, run_training
from trajlab.train.evaluate import evaluate_model


@pytest.fixture
def recorded(tmp_path, tiny_overrides) -> tuple[RecordedRun, dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """A tiny recorded run (augmented synthetic data, BatchNorm), with every batch the trainer received."""
    overrides = [
        *tiny_overrides,
        "record.enabled=true",
        "record.snapshots={every_steps = 2}",
        "averaging.bn_batches=3",
    ]
    cfg = resolve_config(None, None, overrides)
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    original = build.DatasetBatches.batch

    def capturing(self, step):  # noqa: ANN001, ANN202
        x, y, indices, seed = original(self, step)
        captured[step] = (x.clone(), y.clone())
        return x, y, indices, seed

    run_dir = tmp_path / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(build.DatasetBatches, "batch", capturing)
        run_training(cfg, run_dir)
    return RecordedRun(run_dir), captured


def test_batch_of_every_step_is_what_the_trainer_fed(recorded) -> None:
    run, captured = recorded
    assert run.batch_steps == sorted(captured) == list(range(1, 13))
    assert run.config.data.augment  # the rebuilt batches go through the same random crops and flips
    for step, (x, y) in captured.items():
        record = run.batch_record(step)
        assert torch.equal(record.data[0], x) and torch.equal(record.data[1], y), step
        assert record.indices.shape == (32,) and record.aug_seed == run.store.aug_seed(step)
        assert torch.equal(run.batch(step)[0], x)


def test_run_facts(recorded) -> None:
    run, _ = recorded
    assert run.snapshot_steps == list(range(0, 13, 2)) == run.steps()
    assert run.finished and run.checkpoint_steps == []
    assert run.momentum == pytest.approx(run.config.optim.momentum)
    assert run.schedule(5) == pytest.approx(run.config.optim.lr)
    assert [r["step"] for r in run.metrics("eval")] == [6, 12]
    assert run.provenance()["seed"] == run.config.train.seed
    assert run.model is run.model  # built once


def test_heldout_batches_are_one_fixed_disjoint_definition(recorded) -> None:
    run, _ = recorded
    a, b = run.heldout_batches(4), RecordedRun(run.run_dir).heldout_batches(4)
    assert len(a) == 4 and all(x.shape[0] == 32 for x, _ in a)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # Disjoint test images: the 4 batches of 32 are one pass over 128 test images.
    rebuilt = build.heldout_batches(
        run.test_data, run.config.data, batch_size=32, count=4, seed=0, device="cpu"
    )
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, rebuilt))
    assert not torch.equal(run.heldout_batches(1, seed=1)[0][0], a[0][0])
    with pytest.raises(Exception, match="holds only 4 held-out batches of 32"):
        run.heldout_batches(5)


def test_evaluate_is_recalibrate_then_evaluate(recorded) -> None:
    run, _ = recorded
    state = run.weights(run.snapshot_steps[-1])
    model = copy.deepcopy(run.new_model())
    model.load_state_dict(state)
    raw = evaluate_model(model, run.test_batches)
    assert run.evaluate(state, "raw").to_dict() == {**raw, "bn": "running"}
    update_bn(run.recalibration_batches(3), model, 3)
    recal = evaluate_model(model, run.test_batches)
    got = run.evaluate(run.snapshot_steps[-1])  # a step or a state dict
    assert (got.loss, got.acc, got.bn) == (recal["loss"], recal["acc"], "recalibrated")
    with pytest.raises(ValueError, match="'recalibrated' or 'raw'"):
        run.evaluate(state, "running")


def test_fits_the_snapshot_protocols_of_averaging_and_probes(recorded) -> None:
    from trajlab.averaging import TwoPoint, post_hoc
    from trajlab.averaging.post_hoc import SnapshotReader
    from trajlab.probes import matrix

    run, _ = recorded
    for protocol in (SnapshotReader, matrix.RecordedBatches):
        for name, member in inspect.getmembers(protocol, inspect.isfunction):
            if not name.startswith("_"):
                wanted = list(inspect.signature(member).parameters)[1:]
                assert list(inspect.signature(getattr(run, name)).parameters)[: len(wanted)] == wanted, name
    avg = post_hoc(run, TwoPoint(gap_steps=4), at_step=12, every_steps=2)
    last, earlier = run.weights(12), run.weights(8)
    params = [n for n, _ in run.model.named_parameters()]
    for k in params:
        torch.testing.assert_close(avg[k], (last[k] + earlier[k]) / 2)


def test_not_a_run_directory(tmp_path) -> None:
    with pytest.raises(RunDirError, match="no config.json"):
        RecordedRun(tmp_path)
