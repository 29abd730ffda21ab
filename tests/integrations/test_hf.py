"""The Hugging Face callback with the real package: averages equal the container's on the same weights,
dict batches (with ``labels``) through the loss hook, the batch log rebuilds every step's batch, gradient
accumulation, a resume through the Trainer's checkpoint folder is bit-identical, and DDP under torchrun."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="the Hugging Face integration needs `pip install trajlab[hf]`")
pytest.importorskip(
    "accelerate", reason="the Hugging Face Trainer needs accelerate (`pip install trajlab[hf]`)"
)

from hf_fixtures import AVERAGES, Capture, Crash, fit, make_model  # noqa: E402
from integration_checks import assert_equal, averages_of, same_tree, torchrun_two_processes  # noqa: E402

from trajlab.averaging import AveragedWeights  # noqa: E402
from trajlab.integrations.hf import STATE_FILE, hf_loss  # noqa: E402
from trajlab.runs import RecordedRun  # noqa: E402
from trajlab.trajectory import verify_run  # noqa: E402


def test_averages_equal_the_container_and_the_batch_log_is_exact(tmp_path: Path) -> None:
    capture = Capture()
    callback = fit(tmp_path / "run", extra=(capture,))
    steps = len(capture.weights)
    assert steps == 3 * 7  # 200 examples, batch 32
    model = make_model()
    replay = AveragedWeights(model, AVERAGES)
    for step, weights in enumerate(capture.weights, 1):
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(weights[name])
        replay.update(step, model)
    assert_equal(averages_of(callback), replay.state_dict())
    run = RecordedRun(tmp_path / "run")
    assert run.finished and run.recipe.framework == "hf" and run.batch_steps == list(range(1, steps + 1))
    assert len(capture.inputs) == steps
    for step, seen in enumerate(capture.inputs, 1):
        data = run.batch_record(step).data  # a dict batch, collated by the recorded collate_fn
        assert torch.equal(data["input_ids"], seen["input_ids"]) and torch.equal(
            data["labels"], seen["labels"]
        )
    # dict batches through the recorded loss hook (hf_loss), as the CLI's probes and BN recalibration use it
    assert run.loss_fn(run.model, run.batch(1)).ndim == 0
    assert verify_run(run.run_dir).clean
    rows = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert '"ema_0.9/loss"' in rows and '"eval_loss"' in rows


def test_gradient_accumulation_logs_every_micro_batch(tmp_path: Path) -> None:
    capture = Capture()
    fit(tmp_path / "run", epochs=1, accumulate=2, extra=(capture,))
    run = RecordedRun(tmp_path / "run")
    assert len(capture.weights) == 4 and len(capture.inputs) == 7  # 7 micro-batches in 4 steps
    sizes = [len(run.batch_indices(s)) for s in run.batch_steps]
    assert sizes == [64, 64, 64, 8]
    ids = torch.cat([run.batch_record(s).data["input_ids"] for s in run.batch_steps])
    assert torch.equal(ids, torch.cat([seen["input_ids"] for seen in capture.inputs]))


def test_resume_through_the_trainer_checkpoint_is_bit_identical(tmp_path: Path) -> None:
    a = fit(tmp_path / "a")
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(tmp_path / "b", extra=(Crash(12),))  # after the checkpoint of step 10, mid-epoch 2
    assert (tmp_path / "b-hf" / "checkpoint-10" / STATE_FILE).is_file()
    report = verify_run(tmp_path / "b")
    assert report.ok and not report.clean  # unfinished, undamaged
    b = fit(tmp_path / "b", resume=str(tmp_path / "b-hf" / "checkpoint-10"))
    assert_equal(averages_of(a), averages_of(b))
    same_tree(tmp_path / "a" / "trajectory", tmp_path / "b" / "trajectory")
    assert verify_run(tmp_path / "b").clean


def test_hf_loss_says_what_it_expects() -> None:
    with pytest.raises(TypeError, match="dict batch"):
        hf_loss(make_model(), (torch.zeros(2, 3), torch.zeros(2)))


@pytest.mark.slow
def test_ddp_two_processes_rank0_writes_the_global_batch(tmp_path: Path) -> None:
    """torchrun, 2 processes, DDP over gloo on CPU (the Trainer through accelerate): the batch log holds
    both ranks' inputs of every step (rank 0's, then rank 1's), rebuilt exactly, also the epoch's last
    step, which accelerate fills up with samples from the start; every rank holds the same averages."""
    torchrun_two_processes("hf_ddp_worker.py", tmp_path, timeout_s=300)
    seen = [torch.load(tmp_path / f"seen.rank{r}.pt", weights_only=True) for r in (0, 1)]
    run = RecordedRun(tmp_path / "run")
    # 200 items, 16 per rank and step: 7 steps per epoch, 2 epochs.
    assert run.recipe.world_size == 2 and len(seen[0]) == len(seen[1]) == 14
    assert run.batch_steps == list(range(1, 15))
    for step, (a, b) in enumerate(zip(*seen), 1):
        batch = run.batch(step)
        for key in ("input_ids", "attention_mask", "labels"):
            assert torch.equal(batch[key], torch.cat([a[key], b[key]])), (step, key)
    emas = [torch.load(tmp_path / f"seen.ema.rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert_equal(emas[0], emas[1])
    assert verify_run(run.run_dir).clean and run.finished
