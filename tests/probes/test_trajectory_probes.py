"""Loss matrix and batch memory on an in-memory fake store; alignment; interpolation; geometry; callback."""

import json
import math

import numpy as np
import pytest
import torch
from probe_fixtures import MSE, TinyCNN
from torch import nn

from trajlab.probes import (
    ProbeCallback,
    RecordedBatches,
    batch_memory,
    distance_between_runs,
    distance_to_reference,
    gradient_alignment,
    interpolate,
    loss_matrix,
)
from trajlab.train.callbacks import StepContext

F = nn.functional.cross_entropy


class FakeStore:
    """In-memory trajectory: plain SGD on TinyCNN, state dicts and batches of every step."""

    def __init__(self, n_steps=6, seed=0):
        torch.manual_seed(seed)
        self.model = TinyCNN().double()
        self.data = [
            (torch.randn(8, 1, 8, 8, dtype=torch.float64), torch.randint(0, 3, (8,))) for _ in range(n_steps)
        ]
        self.states = {0: {k: v.clone() for k, v in self.model.state_dict().items()}}
        opt = torch.optim.SGD(self.model.parameters(), lr=0.5)
        self.model.eval()  # deterministic steps (dropout off); BN running stats then stay fixed
        for t in range(1, n_steps + 1):
            x, y = self.data[t - 1]
            opt.zero_grad()
            F(self.model(x), y).backward()
            opt.step()
            self.states[t] = {k: v.clone() for k, v in self.model.state_dict().items()}

    def steps(self):
        return sorted(self.states)

    def load(self, step, device=None, dtype=None):
        return {k: v.to(device=device) for k, v in self.states[step].items()}

    def batch(self, step, device=None):
        x, y = self.data[step - 1]
        return x.to(device) if device else x, y.to(device) if device else y

    def batch_indices(self, step):
        return torch.arange(8) + 8 * (step - 1)


def test_loss_matrix_matches_direct_evaluation_and_memory():
    store = FakeStore()
    assert isinstance(store, RecordedBatches)
    held = (torch.randn(8, 1, 8, 8, dtype=torch.float64), torch.randint(0, 3, (8,)))
    m = loss_matrix(store, [2, 4, held], None, lambda: TinyCNN().double(), bn="running")
    assert m.names == ("step_2", "step_4", "heldout_2") and m.used_at == (2, 4, None)
    ref = TinyCNN().double()
    ref.load_state_dict(store.load(3))
    ref.eval()
    with torch.no_grad():
        assert m.losses[0][3] == pytest.approx(float(F(ref(store.data[1][0]), store.data[1][1])), rel=1e-12)
    assert m.cost.forwards == 3 * 7 and np.asarray(m.losses).shape == (3, 7)
    mem = batch_memory(m)
    assert mem.steps_since[0] == -4 and mem.steps_since[-1] == 4
    k0 = mem.steps_since.index(0)
    # At s = u the batch was just trained on: expected advantage equals the held-out mean minus its loss.
    arr = m.array()
    assert mem.advantage[k0] == pytest.approx(np.mean([arr[2, 2] - arr[0, 2], arr[2, 4] - arr[1, 4]]))
    assert mem.count[k0] == 2
    with pytest.raises(ValueError, match="not in the store"):
        loss_matrix(store, [2], [99], lambda: TinyCNN().double())
    with pytest.raises(ValueError, match="held-out"):
        batch_memory(loss_matrix(store, [2], [1, 2], lambda: TinyCNN().double()))


def test_gradient_alignment_closed_form_on_least_squares():
    g = torch.Generator().manual_seed(0)
    model = nn.Linear(3, 1).double()
    xs = [torch.randn(10, 3, dtype=torch.float64, generator=g) for _ in range(4)]
    data = [(x, x.sum(1) + torch.randn(10, dtype=torch.float64, generator=g)) for x in xs]
    r = gradient_alignment(model, MSE, data[:3], data)
    x_all = torch.cat(xs)
    a = torch.cat([x_all, torch.ones(40, 1, dtype=torch.float64)], 1)
    h = a.T @ a / 40  # exact Hessian of the full least-squares loss
    p = torch.cat([model.weight.flatten(), model.bias]).detach()
    y_all = torch.cat([d[1] for d in data])
    full = a.T @ (a @ p - y_all) / 40
    assert r.full_grad_norm == pytest.approx(float(full.norm()), rel=1e-10)
    assert r.g_h_g == pytest.approx(float(full @ h @ full), rel=1e-5)
    gb = []
    for x, y in data[:3]:
        ab = torch.cat([x, torch.ones(10, 1, dtype=torch.float64)], 1)
        gb.append(ab.T @ (ab @ p - y) / 10)
    assert r.cosine[0] == pytest.approx(float(gb[0] @ full / (gb[0].norm() * full.norm())), rel=1e-10)
    tr = np.mean([10 * float((gi - full) @ (gi - full)) for gi in gb])
    assert r.b_simple == pytest.approx(tr / float(full @ full), rel=1e-10)
    ths = np.mean([10 * float((gi - full) @ h @ (gi - full)) for gi in gb])
    assert r.b_noise == pytest.approx(ths / float(full @ h @ full), rel=1e-5)
    assert len(r.consecutive_cosine) == 2 and r.n_full == 40


def test_interpolate_endpoints_and_buffer_modes(cnn):
    model, batch, _ = cnn
    sa = {k: v.clone() for k, v in model.state_dict().items()}
    sb = {k: (v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v + 3) for k, v in sa.items()}
    r = interpolate(model, sa, sb, None, batch, bn="running")
    assert r.ts[0] == 0.0 and r.ts[-1] == 1.0 and len(r.ts) == 11
    ref = TinyCNN().double()
    for state, loss in ((sa, r.losses[0]), (sb, r.losses[-1])):
        ref.load_state_dict(state)
        ref.eval()
        with torch.no_grad():
            assert loss == pytest.approx(float(F(ref(batch[0]), batch[1])), rel=1e-12)
    rc = interpolate(model, sa, sb, [0.5], [batch], buffers="recalibrate", recalibration_data=[batch])
    rb = interpolate(model, sa, sb, [0.5], [batch], bn="batch")
    # Recalibrating on the evaluated batch itself reproduces batch statistics (up to the unbiased var).
    assert rc.losses[0] == pytest.approx(rb.losses[0], rel=0.05)
    with pytest.raises(ValueError, match="recalibration_data"):
        interpolate(model, sa, sb, [0.5], batch, buffers="recalibrate")


def test_distances():
    a = {0: {"w": torch.zeros(2)}, 1: {"w": torch.tensor([3.0, 4.0])}}
    b = {1: {"w": torch.zeros(2)}, 2: {"w": torch.ones(2)}}
    assert distance_to_reference(a, {"w": torch.zeros(2)}) == ([0, 1], [0.0, 5.0])
    assert distance_between_runs(a, b) == ([1], [5.0])
    store = FakeStore(n_steps=2)
    steps, d = distance_to_reference(
        store, store.load(2), keys=[n for n, _ in store.model.named_parameters()]
    )
    assert steps == [0, 1, 2] and d[-1] == 0.0 and d[0] > d[1] > 0


def test_probe_callback_writes_json_lines_and_reuses_lr_star(tmp_path, cnn):
    model, batch, control = cnn
    cb = ProbeCallback(
        tmp_path / "p" / "probes.jsonl",
        every_steps=2,
        heldout_batches=[control],
        bn_modes=("batch", "running"),
        num_points=8,
    )
    ctx = StepContext(
        step=1,
        epoch=0.1,
        lr=0.1,
        batch_indices=torch.arange(16),
        aug_seed=0,
        loss=None,
        model=model,
        optimizer=None,
        total_steps=4,
        device=torch.device("cpu"),
        evaluate=None,
        train_batches=None,
        extra={"batch": batch},
    )
    for step in (1, 2, 3, 4):
        ctx.step = step
        cb.on_step(ctx)
    lines = [json.loads(s) for s in (tmp_path / "p" / "probes.jsonl").read_text().splitlines()]
    assert [(r["step"], r["bn"]) for r in lines] == [
        (2, "batch"),
        (2, "running"),
        (4, "batch"),
        (4, "running"),
    ]
    assert lines[0]["grid"] == "adaptive" and lines[2]["grid"] == "adaptive_from_guess"
    assert lines[2]["cost"]["forwards"] <= 8 + len(lines[2]["lrs"])  # search + the control's forwards
    assert math.isclose(lines[0]["lr_star_over_lr"], lines[0]["lr_star"] / 0.1)
    cb2 = ProbeCallback(tmp_path / "x.jsonl")
    cb2.load_state_dict(cb.state_dict())
    assert cb2.last_lr_star == cb.last_lr_star
    ctx.extra = {}
    with pytest.raises(KeyError, match="batch_fn"):
        cb.on_step(ctx)
