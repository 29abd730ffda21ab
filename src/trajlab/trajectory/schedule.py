"""When the recorder saves a snapshot: a schedule given as data.

A step is saved when any rule selects it::

    every_steps = 100            -> 100, 200, 300, ...
    at_steps = [1, 7, 5000]      -> exactly these
    log_per_decade = 4           -> round(10 ** (k / 4)), k = 0, 1, ...: 1, 2, 3, 6, 10, 18, 32, 56, 100, ...
    windows = [[5000, 200, 1]]  -> dense windows (start, length, every): 5000, 5001, ..., 5199
    include_step0 = true         -> theta_0

Example config section (``record.snapshots``)::

    {"every_steps": 500, "windows": [[5000, 200, 1]], "include_step0": true}
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trajlab.trajectory.errors import TrajectoryError


@dataclass(frozen=True)
class DenseWindow:
    """Steps ``start, start + every, ... < start + length`` (a dense window of snapshots)."""

    start: int
    length: int
    every: int = 1

    def contains(self, step: int) -> bool:
        """Whether ``step`` is one of this window's steps."""
        offset = step - self.start
        return 0 <= offset < self.length and offset % self.every == 0


@dataclass(frozen=True)
class SnapshotSchedule:
    """Which steps get a weight snapshot. Build from config data with :meth:`from_dict`.

    Attributes:
        every_steps: save every this many steps (``None``: off).
        at_steps: save exactly at these steps.
        log_per_decade: save at ``round(10 ** (k / n))`` for k >= 0, n per decade (``None``: off).
        windows: windows ``(start, length, every)`` saved densely, e.g. around an LR drop.
        include_step0: save ``theta_0`` (also saved when ``at_steps`` holds 0).
    """

    every_steps: int | None = None
    at_steps: tuple[int, ...] = ()
    log_per_decade: int | None = None
    windows: tuple[DenseWindow, ...] = ()
    include_step0: bool = True

    def __post_init__(self) -> None:
        if self.every_steps is not None and (not _is_int(self.every_steps) or self.every_steps < 1):
            raise TrajectoryError(
                f"snapshot schedule: every_steps must be an integer >= 1, got {self.every_steps!r}"
            )
        if self.log_per_decade is not None and (not _is_int(self.log_per_decade) or self.log_per_decade < 1):
            raise TrajectoryError(
                f"snapshot schedule: log_per_decade must be an integer >= 1, got {self.log_per_decade!r}"
            )
        for step in self.at_steps:
            if not _is_int(step) or step < 0:
                raise TrajectoryError(f"snapshot schedule: at_steps must be integers >= 0, got {step!r}")
        for window in self.windows:
            values = (window.start, window.length, window.every)
            if (
                not all(_is_int(v) for v in values)
                or window.start < 0
                or window.length < 1
                or window.every < 1
            ):
                raise TrajectoryError(
                    "snapshot schedule: a dense window is [start >= 0, length >= 1, every >= 1], "
                    f"got {list(values)!r}"
                )
        if not isinstance(self.include_step0, bool):
            raise TrajectoryError(
                f"snapshot schedule: include_step0 must be true or false, got {self.include_step0!r}"
            )
        # A frozenset makes the per-step test O(1) for long at_steps lists.
        object.__setattr__(self, "_at", frozenset(self.at_steps))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> SnapshotSchedule:
        """Parse a config section; unknown keys and malformed values are errors.

        Args:
            data: e.g. ``{"every_steps": 100, "at_steps": [5], "log_per_decade": 8,
                "windows": [[5000, 200, 1]], "include_step0": True}``; ``None`` or ``{}`` saves
                only ``theta_0``.

        Raises:
            TrajectoryError: unknown key (the message lists the known ones) or a bad value.
        """
        data = dict(data or {})
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise TrajectoryError(
                f"snapshot schedule: unknown key(s) {', '.join(map(repr, unknown))}; "
                f"known keys: {', '.join(known)}"
            )
        if "at_steps" in data:
            data["at_steps"] = tuple(_as_list(data["at_steps"], "at_steps"))
        if "windows" in data:
            data["windows"] = tuple(_parse_window(w) for w in _as_list(data["windows"], "windows"))
        return cls(**data)

    @classmethod
    def parse(cls, value: SnapshotSchedule | Mapping[str, Any] | None) -> SnapshotSchedule:
        """Accept a schedule, a config dict, or ``None`` (only ``theta_0``)."""
        return value if isinstance(value, SnapshotSchedule) else cls.from_dict(value)

    def to_dict(self) -> dict[str, Any]:
        """The config-data form (JSON-serialisable, round-trips through :meth:`from_dict`)."""
        return {
            "every_steps": self.every_steps,
            "at_steps": list(self.at_steps),
            "log_per_decade": self.log_per_decade,
            "windows": [[w.start, w.length, w.every] for w in self.windows],
            "include_step0": self.include_step0,
        }

    def should_save(self, step: int) -> bool:
        """Whether the snapshot of ``theta_step`` is saved."""
        if step == 0:
            return self.include_step0 or 0 in self._at  # type: ignore[attr-defined]
        if self.every_steps is not None and step % self.every_steps == 0:
            return True
        if step in self._at:  # type: ignore[attr-defined]
            return True
        if self.log_per_decade is not None and _is_log_step(step, self.log_per_decade):
            return True
        return any(w.contains(step) for w in self.windows)

    def steps_until(self, last_step: int) -> list[int]:
        """All saved steps in ``[0, last_step]``, ascending (for planning disk use and summaries)."""
        return [s for s in range(last_step + 1) if self.should_save(s)]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_list(value: Any, key: str) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise TrajectoryError(f"snapshot schedule: {key} must be a list, got {value!r}")
    return list(value)


def _parse_window(value: Any) -> DenseWindow:
    if isinstance(value, DenseWindow):
        return value
    if isinstance(value, Mapping):
        unknown = set(value) - {"start", "length", "every"}
        if unknown:
            raise TrajectoryError(
                f"snapshot schedule: dense window keys are start, length, every; got {sorted(value)}"
            )
        return DenseWindow(**value)
    if isinstance(value, (list, tuple)) and len(value) in (2, 3):
        return DenseWindow(*value)
    raise TrajectoryError(f"snapshot schedule: a dense window is [start, length, every], got {value!r}")


def _is_log_step(step: int, per_decade: int) -> bool:
    # Candidates k near per_decade * log10(step); rounding 10 ** (k / n) to an integer absorbs float error.
    k_center = round(per_decade * math.log10(step))
    return any(
        round(10 ** (k / per_decade)) == step for k in (k_center - 1, k_center, k_center + 1) if k >= 0
    )
