"""Post-hoc averaging from a (fake) snapshot store: online == post hoc, streaming, exact-or-error."""

from __future__ import annotations

import pytest
import torch
from averaging_fixtures import FakeStore, all_rules, sgd_trajectory, tiny_net

from trajlab.averaging import (
    EMA,
    SWA,
    AveragedWeights,
    NotRepresentableError,
    TwoPoint,
    post_hoc,
    post_hoc_many,
)


def _online(rule, states, every):
    model = tiny_net()
    model.load_state_dict(states[0])
    avg = AveragedWeights(model, rule, every_steps=every)
    for t in range(1, len(states)):
        model.load_state_dict(states[t])
        avg.update(t)
    return avg.average()


@pytest.mark.parametrize("every", [1, 2])
def test_online_equals_post_hoc(rule, every):
    states = sgd_trajectory(tiny_net(), 10)
    store = FakeStore(dict(enumerate(states)))
    got = post_hoc(store, rule, 10, every_steps=every, buffer_names={"1.running_mean", "1.running_var"})
    for name, x in _online(rule, states, every).items():
        torch.testing.assert_close(got[name], x, atol=1e-6, rtol=1e-5)
    assert torch.equal(got["1.running_mean"], states[10]["1.running_mean"])  # copied, as online "copy"
    assert set(got) == set(states[0])


def test_post_hoc_many_streams_each_snapshot_once():
    states = sgd_trajectory(tiny_net(), 12)
    store = FakeStore(dict(enumerate(states)))
    rules = all_rules()
    many = post_hoc_many(store, rules, [8, 12])
    assert sorted(store.loads) == sorted(set(store.loads))
    store.loads.clear()
    for r in rules[:3]:
        one = post_hoc(store, r, 8)
        for k, v in one.items():
            torch.testing.assert_close(many[(r.name, 8)][k], v)


def test_ema_every_step_from_sparse_store_says_what_is_exact():
    states = sgd_trajectory(tiny_net(), 40)
    store = FakeStore({t: s for t, s in enumerate(states) if t % 10 == 0})
    with pytest.raises(NotRepresentableError, match="every_steps=10") as err:
        post_hoc(store, EMA(0.9), 40)
    assert "every 10 steps" in str(err.value)
    # The suggested alternative is exact: the EMA updated every 10 steps, same per-step decay.
    got = post_hoc(store, EMA(0.9), 40, every_steps=10)
    online = _online(EMA(0.9), states, 10)
    for k, v in online.items():
        torch.testing.assert_close(got[k], v, atol=1e-6, rtol=1e-5)


def test_two_point_gap_must_match_spacing():
    states = sgd_trajectory(tiny_net(), 40)
    store = FakeStore({t: s for t, s in enumerate(states) if t % 10 == 0})
    with pytest.raises(NotRepresentableError, match="lacks"):
        post_hoc(store, TwoPoint(15), 40)
    got = post_hoc(store, TwoPoint(20), 40)  # needs only 20 and 40
    expected = (states[40]["0.weight"] + states[20]["0.weight"]) / 2
    torch.testing.assert_close(got["0.weight"], expected)
    with pytest.raises(NotRepresentableError, match="ends at step 40"):
        post_hoc(store, SWA(), 50, every_steps=10)


def test_tolerance_drops_negligible_weights_explicitly():
    states = sgd_trajectory(tiny_net(), 30)
    store = FakeStore({t: s for t, s in enumerate(states) if t >= 10})  # theta_0..9 not stored
    with pytest.raises(NotRepresentableError):
        post_hoc(store, EMA(0.5), 30)
    got = post_hoc(store, EMA(0.5), 30, tolerance=1e-5)
    torch.testing.assert_close(got["0.weight"], _online(EMA(0.5), states, 1)["0.weight"], atol=1e-5, rtol=0)
