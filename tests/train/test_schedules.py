import math

import pytest

from trajlab.train import schedules as S


def test_constant_and_warmup():
    lr = S.constant(0.1, warmup_steps=4)
    assert [lr(t) for t in (1, 2, 4, 5, 1000)] == pytest.approx([0.025, 0.05, 0.1, 0.1, 0.1])


def test_step_decay_applies_after_milestone():
    lr = S.step_decay(1.0, (10, 20), gamma=0.1)
    assert lr(10) == 1.0 and lr(11) == pytest.approx(0.1) and lr(20) == pytest.approx(0.1)
    assert lr(21) == pytest.approx(0.01)


def test_cosine_endpoints():
    lr = S.cosine(1.0, total_steps=100, final_lr_fraction=0.1)
    assert lr(0) == pytest.approx(1.0)
    assert lr(50) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr(100) == pytest.approx(0.1)
    assert lr(200) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "shape,f",
    [
        ("linear", lambda p: 1 - p),
        ("cosine", lambda p: 0.5 * (1 + math.cos(math.pi * p))),
        ("1-sqrt", lambda p: 1 - math.sqrt(p)),
    ],
)
def test_wsd_cooldown_shapes(shape, f):
    lr = S.warmup_stable_decay(2.0, total_steps=100, decay_steps=40, decay_shape=shape)
    assert lr(60) == 2.0
    for t in (70, 80, 100):
        assert lr(t) == pytest.approx(2.0 * f((t - 60) / 40))


def test_inverse_time():
    lr = S.inverse_time(0.5, start_step=10, time_scale_steps=5)
    assert lr(10) == 0.5
    assert lr(15) == pytest.approx(0.25)
    assert lr(30) == pytest.approx(0.5 / 5)


def test_build_schedule_dispatch():
    spec = S.ScheduleSpec(name="wsd", decay_steps=10)
    lr = S.build_schedule(spec, 1.0, 20)
    assert lr(10) == 1.0 and lr(20) == 0.0
    with pytest.raises(ValueError, match="unknown schedule"):
        S.build_schedule(S.ScheduleSpec(name="nope"), 1.0, 10)
