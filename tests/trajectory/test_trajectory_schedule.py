"""SnapshotSchedule: parsing config data, errors on bad input, and which steps are selected."""

from __future__ import annotations

import pytest

from trajlab.trajectory import SnapshotSchedule, TrajectoryError


def test_every_steps_and_step0() -> None:
    schedule = SnapshotSchedule.from_dict({"every_steps": 10})
    assert schedule.steps_until(35) == [0, 10, 20, 30]
    assert SnapshotSchedule.from_dict({"every_steps": 10, "include_step0": False}).steps_until(20) == [10, 20]


def test_at_steps_windows_and_union() -> None:
    schedule = SnapshotSchedule.from_dict(
        {"at_steps": [3, 7], "windows": [[20, 5, 2], {"start": 40, "length": 3}], "include_step0": False}
    )
    assert schedule.steps_until(100) == [3, 7, 20, 22, 24, 40, 41, 42]
    assert SnapshotSchedule.from_dict({"at_steps": [0], "include_step0": False}).should_save(0)


@pytest.mark.parametrize("per_decade", [1, 3, 4, 10, 25])
def test_log_spaced_matches_definition(per_decade: int) -> None:
    # Reference: the set {round(10 ** (k / n))} enumerated directly.
    expected = sorted({round(10 ** (k / per_decade)) for k in range(0, 5 * per_decade)} - {0})
    expected = [s for s in expected if s <= 20_000]
    schedule = SnapshotSchedule.from_dict({"log_per_decade": per_decade, "include_step0": False})
    assert schedule.steps_until(20_000) == expected


def test_round_trip_through_dict() -> None:
    schedule = SnapshotSchedule.from_dict({"every_steps": 5, "at_steps": [2], "windows": [[10, 4, 1]]})
    assert SnapshotSchedule.from_dict(schedule.to_dict()) == schedule
    assert SnapshotSchedule.parse(None).steps_until(10) == [0]
    assert SnapshotSchedule.parse(schedule) is schedule


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"evry_steps": 10}, "unknown key(s) 'evry_steps'; known keys: every_steps"),
        ({"every_steps": 0}, "every_steps must be an integer >= 1"),
        ({"every_steps": 2.5}, "every_steps must be an integer >= 1"),
        ({"at_steps": 5}, "at_steps must be a list"),
        ({"at_steps": [-1]}, "at_steps must be integers >= 0"),
        ({"windows": [[5, 0, 1]]}, "dense window is [start >= 0, length >= 1, every >= 1]"),
        ({"windows": [[5]]}, "a dense window is [start, length, every]"),
        ({"log_per_decade": 0}, "log_per_decade must be an integer >= 1"),
        ({"include_step0": "yes"}, "include_step0 must be true or false"),
    ],
)
def test_bad_input_is_a_clear_error(data: dict, needle: str) -> None:
    with pytest.raises(TrajectoryError) as info:
        SnapshotSchedule.from_dict(data)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)
