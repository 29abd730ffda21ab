"""AveragingCallback through the training hooks, with a hand-made StepContext."""

from __future__ import annotations

import torch
from averaging_fixtures import tiny_net

from trajlab.averaging import EMA, SWA, AveragedWeights, AveragingCallback
from trajlab.train.callbacks import StepContext


def _ctx(model, step, seen):
    def evaluate(m):
        seen.append((m[0].weight.clone(), m[1].running_mean.clone(), m.training))
        return {"loss": 1.5, "acc": 0.25}

    def train_batches(n):
        gen = torch.Generator().manual_seed(0)
        return iter([(torch.randn(8, 4, generator=gen), torch.zeros(8)) for _ in range(n)])

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return StepContext(
        step=step, epoch=0.0, lr=0.1, batch_indices=torch.zeros(0, dtype=torch.int64), aug_seed=-1, loss=None,
        model=model, optimizer=opt, total_steps=10, device=torch.device("cpu"), evaluate=evaluate,
        train_batches=train_batches,
    )  # fmt: skip


def test_callback_updates_evaluates_and_restores():
    model = tiny_net()
    cb = AveragingCallback(AveragedWeights(model, [EMA(0.5), SWA()]), eval_bn="recalibrate", bn_batches=3)
    seen: list = []
    cb.on_train_start(_ctx(model, 0, seen))
    for t in range(1, 4):
        with torch.no_grad():
            model[0].weight.add_(1.0)
        cb.on_step(_ctx(model, t, seen))
    live = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    metrics = cb.on_eval(_ctx(model, 3, seen))
    assert metrics == {
        "ema_0.5/test_loss": 1.5, "ema_0.5/test_acc": 0.25, "ema_0.5/bn_recalibrated": 1.0,
        "swa_start0/test_loss": 1.5, "swa_start0/test_acc": 0.25, "swa_start0/bn_recalibrated": 1.0,
    }  # fmt: skip
    torch.testing.assert_close(seen[0][0], cb.averaged.average("ema_0.5")["0.weight"])
    assert not torch.equal(seen[0][1], live["1.running_mean"])  # recalibrated inside
    assert all(torch.equal(v, live[k]) for k, v in model.state_dict().items()) and model.training

    resumed = AveragingCallback(AveragedWeights(tiny_net(7), [EMA(0.5), SWA()]))
    resumed.load_state_dict(cb.state_dict())
    resumed.on_train_start(_ctx(model, 3, seen))  # must not reset a resumed average
    assert torch.equal(
        resumed.averaged.average("swa_start0")["0.weight"], cb.averaged.average("swa_start0")["0.weight"]
    )
