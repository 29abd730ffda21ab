"""The Lightning callback with the real package: averages equal the container's on the same weights, the
batch log rebuilds every step's batch, a resume through Lightning's checkpoint is bit-identical."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning", reason="the Lightning integration needs `pip install trajlab[lightning]`")

from integration_checks import assert_equal, averages_of, same_tree, torchrun_two_processes  # noqa: E402
from lit_fixtures import AVERAGES, Capture, Crash, fit, make_model  # noqa: E402

from trajlab.averaging import AveragedWeights  # noqa: E402
from trajlab.runs import RecordedRun  # noqa: E402
from trajlab.trajectory import verify_run  # noqa: E402


def test_averages_equal_the_container_and_the_batch_log_is_exact(tmp_path: Path) -> None:
    capture = Capture()
    callback = fit(tmp_path / "run", extra=(capture,))
    steps = len(capture.weights)
    assert steps == 3 * 8  # 250 examples, batch 32: 8 steps per epoch
    # the container fed the same weight sequence theta_0 .. theta_T
    model = make_model()
    replay = AveragedWeights(model, AVERAGES)
    for step, weights in enumerate(capture.weights, 1):
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(weights[name])
        replay.update(step, model)
    assert_equal(averages_of(callback), replay.state_dict())
    # every step's batch, rebuilt from the run alone
    run = RecordedRun(tmp_path / "run")
    assert run.finished and run.kind == "loop" and run.batch_steps == list(range(1, steps + 1))
    for step, (x, y) in enumerate(capture.batches, 1):
        data = run.batch_record(step).data
        assert torch.equal(data[0], x) and torch.equal(data[1], y), step
    assert not torch.equal(run.batch_indices(1), run.batch_indices(9))  # shuffled per epoch
    assert verify_run(run.run_dir).clean
    assert run.recipe.framework == "lightning"


@pytest.mark.parametrize(("crash_at", "resume_from", "every"), [(12, 10, 5), (None, 8, 8)])
def test_resume_through_lightning_checkpoint_is_bit_identical(
    tmp_path: Path, crash_at, resume_from, every
) -> None:
    a = fit(tmp_path / "a", checkpoint_every=every)
    if crash_at is not None:  # mid-epoch: a crash after the checkpoint of step 10 (epoch 2 of 3)
        with pytest.raises(RuntimeError, match="simulated crash"):
            fit(tmp_path / "b", extra=(Crash(crash_at),), checkpoint_every=every)
        report = verify_run(tmp_path / "b")
        assert report.ok and not report.clean  # unfinished, undamaged
    else:  # a finished fit of one epoch, continued to three from its end-of-epoch checkpoint
        fit(tmp_path / "b", epochs=1, checkpoint_every=every)
    ckpt = tmp_path / "b-ckpt" / f"step={resume_from}.ckpt"
    b = fit(tmp_path / "b", ckpt_path=str(ckpt), checkpoint_every=every)
    assert_equal(averages_of(a), averages_of(b))
    same_tree(tmp_path / "a" / "trajectory", tmp_path / "b" / "trajectory")
    final = [sorted((tmp_path / r / "checkpoints").glob("ckpt_*.pt"))[-1] for r in ("a", "b")]
    assert_equal(*(torch.load(f, weights_only=True)["model"] for f in final))
    assert verify_run(tmp_path / "b").clean


@pytest.mark.slow
def test_ddp_two_processes_rank0_writes_the_global_batch(tmp_path: Path) -> None:
    """torchrun, 2 processes, gloo on CPU: the batch log holds both ranks' indices of every step (rank 0's
    then rank 1's), rebuilt exactly; every rank holds the same averages; one run directory, rank 0's."""
    torchrun_two_processes("lit_ddp_worker.py", tmp_path, timeout_s=180)
    seen = [torch.load(tmp_path / f"seen.rank{r}.pt", weights_only=True) for r in (0, 1)]
    run = RecordedRun(tmp_path / "run")
    assert run.recipe.world_size == 2 and len(seen[0]) == len(seen[1]) == 2 * 4  # 125 per rank, batch 32
    assert run.batch_steps == list(range(1, 9))
    for step, (a, b) in enumerate(zip(*seen), 1):
        x, y = run.batch(step)
        assert torch.equal(x, torch.cat([a[0], b[0]])) and torch.equal(y, torch.cat([a[1], b[1]])), step
    emas = [torch.load(tmp_path / f"seen.ema.rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert_equal(emas[0], emas[1])
    assert verify_run(run.run_dir).clean and run.finished
