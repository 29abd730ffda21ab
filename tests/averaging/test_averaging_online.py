"""Contract and reference tests of AveragedWeights (online averages)."""

from __future__ import annotations

import pytest
import torch
from averaging_fixtures import all_rules, sgd_trajectory, tiny_net
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from trajlab.averaging import EMA, SWA, AveragedWeights, PowerEMA, StorageOptions, TwoPoint, unwrap_model


def replay(avg: AveragedWeights, model: nn.Module, states, start: int = 1) -> None:
    """Load theta_t into ``model`` and update, for t = start..len(states)-1."""
    for t in range(start, len(states)):
        model.load_state_dict(states[t])
        avg.update(t)


def expected_average(rule, states, step, every, names):
    w = rule.weights(step, every)
    return {n: sum(float(w[j]) * states[j][n].double() for j in range(step + 1) if w[j] != 0) for n in names}


@pytest.mark.parametrize("every", [1, 2])
def test_online_matches_kernel(rule, every):
    model = tiny_net()
    states = sgd_trajectory(tiny_net(), 11)
    model.load_state_dict(states[0])
    avg = AveragedWeights(model, rule, every_steps=every)
    replay(avg, model, states)
    names = [n for n, _ in model.named_parameters()]
    expected = expected_average(rule, states, 11, every, names)
    got = avg.average()
    for n in names:
        torch.testing.assert_close(got[n].double(), expected[n], atol=1e-6, rtol=1e-5)


def test_several_rules_fused_equal_separate():
    rules = [EMA(0.9), EMA(0.5, warmup=True), SWA(3), PowerEMA(1.0), TwoPoint(2)]
    states = sgd_trajectory(tiny_net(), 9)
    model = tiny_net()
    model.load_state_dict(states[0])
    together = AveragedWeights(model, rules, every_steps=[1, 1, 3, 1, 2])
    assert together._stack is not None and together._fused == [
        "ema_0.9",
        "ema_0.5_warmup",
        "swa_start3",
        "power_ema_g1",
    ]
    separate = [AveragedWeights(model, r, every_steps=e) for r, e in zip(rules, [1, 1, 3, 1, 2])]
    for t in range(1, 10):
        model.load_state_dict(states[t])
        together.update(t)
        for s in separate:
            s.update(t)
    for r, s in zip(rules, separate):
        for n, x in together.average(r.name).items():
            torch.testing.assert_close(x, s.average()[n], atol=1e-6, rtol=1e-6)


def test_fused_foreach_path_equals_broadcast_path():
    # The GPU branch (one foreach kernel, Python-float weights) run on CPU tensors.
    states = sgd_trajectory(tiny_net(), 5)
    model = tiny_net()
    model.load_state_dict(states[0])
    a = AveragedWeights(model, [EMA(0.9), EMA(0.6)])
    b = AveragedWeights(model, [EMA(0.9), EMA(0.6)])
    for t in range(1, 6):
        model.load_state_dict(states[t])
        a.update(t)
        b.step = t
        ws = []
        for n in b._fused:
            w, b._states[n] = b.rules[n].advance(b._states[n], t)
            ws.append(w)
        k = len(ws)
        live = b._live(model)
        with torch.no_grad():
            torch._foreach_lerp_(
                [st[i] for i in range(k) for st in b._stack], live * k, [w for w in ws for _ in live]
            )
    for n in a.names:
        for x, y in zip(a.average(n).values(), b.average(n).values()):
            torch.testing.assert_close(x, y)


@pytest.mark.parametrize("decay", [0.5, 0.99])
def test_reference_ema_vs_averaged_model(decay):
    states = sgd_trajectory(tiny_net(), 8)
    model = tiny_net()
    model.load_state_dict(states[0])
    ref = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    ref.update_parameters(model)  # first call copies theta_0, as our init does
    ours = AveragedWeights(model, EMA(decay), storage=StorageOptions(buffers="average"))
    for t in range(1, 9):
        model.load_state_dict(states[t])
        ref.update_parameters(model)
        ours.update(t)
    got = ours.average()
    for n, x in ref.module.state_dict().items():
        if x.is_floating_point():
            torch.testing.assert_close(got[n], x, atol=1e-6, rtol=1e-6)


def test_reference_swa_vs_averaged_model():
    states = sgd_trajectory(tiny_net(), 8)
    model = tiny_net()
    model.load_state_dict(states[0])
    ref = AveragedModel(model)
    ref.update_parameters(model)
    ours = AveragedWeights(model, SWA())
    for t in range(1, 9):
        model.load_state_dict(states[t])
        ref.update_parameters(model)
        ours.update(t)
    for n, x in ref.module.named_parameters():
        torch.testing.assert_close(ours.average()[n], x.detach(), atol=1e-6, rtol=1e-6)


def test_state_dict_round_trip_and_exact_resume(rule):
    rules = [rule, EMA(0.3)] if rule.name != "ema_0.3" else [rule]
    states = sgd_trajectory(tiny_net(), 12)
    model = tiny_net()
    model.load_state_dict(states[0])
    straight = AveragedWeights(model, rules, every_steps=2, storage=StorageOptions(buffers="average"))
    replay(straight, model, states)
    model.load_state_dict(states[0])
    first = AveragedWeights(model, rules, every_steps=2, storage=StorageOptions(buffers="average"))
    replay(first, model, states[:7])
    saved = first.state_dict()
    for entry in saved["averages"].values():  # storage must not be shared (safetensors refuses that)
        tensors = list(entry.get("average", {}).values())
        assert len({t.untyped_storage().data_ptr() for t in tensors}) == len(tensors)
    fresh = tiny_net(seed=5)  # a new process: other initial weights, then the checkpoint
    resumed = AveragedWeights(fresh, rules, every_steps=2, storage=StorageOptions(buffers="average"))
    resumed.load_state_dict(saved)
    assert resumed.step == 6
    replay(resumed, fresh, states, start=7)
    for n in straight.names:
        for k, x in straight.average(n).items():
            assert torch.equal(x, resumed.average(n)[k]), (n, k)


def test_load_state_dict_rejects_other_rules():
    model = tiny_net()
    with pytest.raises(ValueError, match="differ"):
        AveragedWeights(model, EMA(0.9)).load_state_dict(AveragedWeights(model, EMA(0.8)).state_dict())


def test_no_grads_and_live_model_untouched():
    model = tiny_net()
    model(torch.randn(4, 4)).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    avg = AveragedWeights(model, all_rules(), every_steps=2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    avg.update(2)
    for n in avg.names:
        assert all(not t.requires_grad and t.grad_fn is None for t in avg.average(n).values())
        with avg.swap_into(model, n):
            pass
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert all(
        torch.equal(v, before[k] + (1.0 if "running" not in k and "num" not in k else 0))
        for k, v in model.state_dict().items()
    )


def test_swap_into_restores_on_exception():
    model = tiny_net()
    avg = AveragedWeights(model, EMA(0.5))
    with torch.no_grad():
        model[0].weight.add_(1.0)
    avg.update(1)
    live = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"), avg.swap_into(model):
        torch.testing.assert_close(model[0].weight, avg.average()["0.weight"])
        model[1].running_mean.add_(3.0)  # e.g. BN recalibration inside
        raise RuntimeError("boom")
    assert all(torch.equal(v, live[k]) for k, v in model.state_dict().items())


def test_device_and_dtype_storage():
    model = tiny_net()
    avg = AveragedWeights(model, [EMA(0.9), SWA()], storage=StorageOptions(device="cpu", dtype=torch.float64))
    assert all(t.dtype == torch.float64 for t in avg.average("ema_0.9").values())
    with torch.no_grad():
        model[0].weight.add_(1.0)
    avg.update(1)
    with avg.swap_into(model, "swa_start0"):
        assert model[0].weight.dtype == torch.float32


def test_bf16_compensated_ema_still_moves():
    # Increments of 1e-5 are far below one bf16 ulp (2**-7 at 1.0): plain bf16 storage never moves.
    model = nn.Linear(64, 64, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    comp = AveragedWeights(model, EMA(0.999), storage=StorageOptions(dtype=torch.bfloat16))
    plain = [model.weight.detach().to(torch.bfloat16)]
    exact = model.weight.detach().double().clone()
    with torch.no_grad():
        model.weight.fill_(1.01)
    for t in range(1, 2001):
        comp.update(t)
        torch._foreach_lerp_(plain, [model.weight.detach().to(torch.bfloat16)], 0.001)
        exact.lerp_(model.weight.detach().double(), 0.001)
    state = comp._states["ema_0.999"]
    value = state.average[0].double() * (1 + state.compensation[0].double())
    assert torch.equal(plain[0], torch.ones_like(plain[0]))  # the failure mode being fixed
    assert (value - exact).abs().max() < 1e-4  # the move is 8.6e-3; a bf16+bf16 pair was off by 6e-3
    assert (comp.average()["weight"].double() - exact).abs().max() < 2**-7


def test_fp32_master_for_bf16_model():
    model = nn.Linear(8, 8).to(torch.bfloat16)
    avg = AveragedWeights(model, EMA(0.999), storage=StorageOptions(dtype=torch.float32))
    with torch.no_grad():
        model.weight.add_(0.5)
    avg.update(1)
    assert avg.average()["weight"].dtype == torch.float32
    with avg.swap_into(model):
        assert model.weight.dtype == torch.bfloat16


def test_two_point_ring_is_minimal():
    model = tiny_net()
    avg = AveragedWeights(model, TwoPoint(100), every_steps=100)
    assert len(avg._states["two_point_k100"].slots) == 2


def test_unwraps_dataparallel_and_compile():
    model = tiny_net()
    wrapped = nn.DataParallel(torch.compile(model))  # compile is lazy: nothing is compiled here
    assert unwrap_model(wrapped) is model
    avg = AveragedWeights(wrapped, EMA(0.9))
    assert set(avg.average()) == {n for n, _ in model.named_parameters()}
    with avg.swap_into(wrapped) as m:
        assert m is model


def test_update_without_step_and_interval():
    model = tiny_net()
    avg = AveragedWeights(model, EMA(0.5), every_steps=3)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    avg.update()
    avg.update()
    assert avg.step == 2 and avg._states["ema_0.5"].step == 0
    avg.update()
    assert avg._states["ema_0.5"].step == 3
    with pytest.raises(ValueError, match="after"):
        avg.update(3)


def test_averaged_state_dict_is_complete():
    model = tiny_net()
    avg = AveragedWeights(model, EMA(0.9))
    sd = avg.averaged_state_dict()
    assert set(sd) == set(model.state_dict())
    tiny_net(3).load_state_dict(sd)


def test_old_storage_keywords_warn_and_still_work():
    model = tiny_net()
    new = AveragedWeights(model, EMA(0.9), storage=StorageOptions(device="cpu", dtype=torch.float64))
    with pytest.warns(DeprecationWarning, match=r"storage=StorageOptions\(device=\.\.\., dtype=\.\.\.\)"):
        old = AveragedWeights(model, EMA(0.9), 1, "cpu", dtype=torch.float64)
    assert old.storage == new.storage
    with pytest.raises(TypeError, match="unexpected keyword"):
        AveragedWeights(model, EMA(0.9), devcie="cpu")
    with pytest.raises(ValueError, match="buffers must be 'copy' or 'average'"):
        StorageOptions(buffers="mean")
