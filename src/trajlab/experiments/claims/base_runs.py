"""The base runs every claim shares, where their constant-lr phase plateaus, and the branch window.

One recorded constant-lr base run per seed feeds claims A, B, C, E, F and G; :func:`prepare_base_runs` trains
(or reuses) them and finds their shared branch window (:class:`Window`), inside which the branch runs start
and the averaging claims read their numbers.

The window is quasi-stationary when the train loss has plateaued in every seed or, failing that, the
held-out (recalibrated test) loss has (:func:`held_out_plateau`; added after the small budget's train loss
kept drifting on its 4096-image subset while the held-out loss was flat).

Plateau test (pure, :func:`detect_plateau`): the logged train loss (each row a mean over
``log_every_steps`` steps) is cut into ``windows`` equal windows of steps; a plateau starts at the
earliest window boundary s such that, over the windows from s to the end (at least 3), the linear trend of
the window means is within noise: its total drift over [s, end] is smaller than twice its standard error
and smaller than ``rel_tol`` of the level. The standard error comes from the scatter of the window means
around the trend, so the autocorrelation of consecutive steps inside a window does not make the test
over-confident.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trajlab.config import HostSettings
from trajlab.experiments.claims import common
from trajlab.experiments.claims.budgets import Budget, base_spec, extension_spec, get_budget
from trajlab.experiments.claims.cache import ensure_runs


@dataclass(frozen=True)
class Plateau:
    """Result of :func:`detect_plateau` (JSON-ready via :meth:`to_dict`).

    Attributes:
        found: a plateau start was found.
        start_step: first step of the plateau (the last step if none was found).
        end_step: last logged step.
        drift: fitted change of the loss over [start_step, end_step] (nan if none found).
        drift_se: its standard error.
        level: mean loss over the plateau.
        window_steps: length of one window.
        window_means: mean loss per window.
        window_ends: last step of each window.
    """

    found: bool
    start_step: int
    end_step: int
    drift: float
    drift_se: float
    level: float
    window_steps: float
    window_means: tuple[float, ...]
    window_ends: tuple[int, ...]

    @property
    def length_steps(self) -> int:
        return self.end_step - self.start_step if self.found else 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["length_steps"] = self.length_steps
        return d


def _trend(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Slope of the least-squares line and its standard error (residual scatter, ddof=2)."""
    xc = x - x.mean()
    sxx = float((xc**2).sum())
    slope = float((xc * (y - y.mean())).sum() / sxx)
    resid = y - y.mean() - slope * xc
    dof = max(x.size - 2, 1)
    return slope, math.sqrt(float((resid**2).sum()) / dof / sxx)


def detect_plateau(
    steps: Sequence[int], losses: Sequence[float], *, windows: int = 10, rel_tol: float = 0.05, z: float = 2.0
) -> Plateau:
    """Find where a noisy loss curve stops trending (see the module docstring).

    Args:
        steps: logged steps (increasing).
        losses: the loss at each logged step.
        windows: number of equal windows of steps.
        rel_tol: largest drift allowed, relative to the plateau level.
        z: drift must also be below ``z`` standard errors.

    Returns:
        A :class:`Plateau`.
    """
    s = np.asarray(steps, dtype=np.float64)
    y = np.asarray(losses, dtype=np.float64)
    if s.size < 2 * windows or windows < 4:
        raise ValueError(f"need at least {2 * windows} logged points for {windows} windows (>= 4)")
    edges = np.linspace(0.0, s[-1], windows + 1)
    idx = np.clip(np.searchsorted(edges, s, side="left") - 1, 0, windows - 1)
    means = np.array([y[idx == w].mean() if np.any(idx == w) else np.nan for w in range(windows)])
    ends = [int(round(e)) for e in edges[1:]]
    centres = 0.5 * (edges[:-1] + edges[1:])
    for w in range(1, windows - 2):
        m, c = means[w:], centres[w:]
        ok = np.isfinite(m)
        if ok.sum() < 3:
            break
        slope, se = _trend(c[ok], m[ok])
        span = float(s[-1] - edges[w])
        drift, drift_se, level = slope * span, se * span, float(m[ok].mean())
        if abs(drift) <= z * drift_se and abs(drift) <= rel_tol * abs(level):
            return Plateau(
                True,
                int(round(edges[w])),
                int(s[-1]),
                drift,
                drift_se,
                level,
                float(edges[1]),
                tuple(means.tolist()),
                tuple(ends),
            )
    return Plateau(
        False,
        int(s[-1]),
        int(s[-1]),
        math.nan,
        math.nan,
        float(means[-1]),
        float(edges[1]),
        tuple(means.tolist()),
        tuple(ends),
    )


def base_plateau(root: str | Path, budget: Budget, seed: int, *, extended: bool = False) -> Plateau:
    """Plateau of the (complete) base run of ``seed``, from its train-loss rows; with ``extended``, of the
    base run followed by its extension (:func:`extension_spec`), cut into proportionally more windows."""
    rows = common.metric_rows(base_spec(budget, seed).run_dir(root), "train")
    windows = budget.plateau_windows
    if extended:
        last = rows[-1]["step"]
        more = common.metric_rows(extension_spec(budget, seed).run_dir(root), "train")
        rows += [r for r in more if r["step"] > last]
        windows = int(round(windows * rows[-1]["step"] / last))
    return detect_plateau([r["step"] for r in rows], [r["train_loss"] for r in rows], windows=windows)


def held_out_plateau(root: str | Path, budget: Budget, seed: int) -> Plateau | None:
    """Plateau of the base run's held-out loss: the recalibrated-BN test loss the runner logs at every
    evaluation (``live_recal/test_loss``), two evaluations per window; ``None`` with fewer than 8.

    Why a second criterion: on a small training subset the train loss keeps drifting down for a long time
    as the network fits the subset (the small budget's runs, EXPERIMENTS.md), while the held-out loss, what
    the averaging claims E and F are about, has long stopped moving.
    """
    series = common.eval_series(base_spec(budget, seed).run_dir(root), "live_recal/test_loss")
    steps = sorted(series)
    if len(steps) < 8:
        return None
    windows = min(budget.plateau_windows, len(steps) // 2)
    return detect_plateau(steps, [series[s] for s in steps], windows=windows)


@dataclass(frozen=True)
class Window:
    """The shared branch window [branch_step, end_step] of claims C-G.

    ``branch_step`` is the first checkpoint at or after the latest train-loss plateau start over the
    seeds, capped so that the window keeps ``min_window_fraction`` of the run. ``in_plateau`` says whether
    the window is quasi-stationary: every seed's train-loss plateau (``plateaus``) had started by
    ``branch_step``, or, failing that, every seed's held-out-loss plateau (``held_out_plateaus``, see
    :func:`held_out_plateau`) had; ``stationarity`` names which ("train loss", "held-out loss", "none").
    """

    branch_step: int
    end_step: int
    in_plateau: bool
    plateaus: dict[int, dict[str, Any]]
    held_out_plateaus: dict[int, dict[str, Any] | None] = field(default_factory=dict)
    stationarity: str = "none"

    @property
    def length_steps(self) -> int:
        return self.end_step - self.branch_step

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "length_steps": self.length_steps}


def shared_window(root: str | Path, budget: Budget, seeds: Sequence[int]) -> Window:
    """The branch window of the (complete) base runs of ``seeds`` (see :class:`Window`)."""
    cfg = base_spec(budget, seeds[0]).config()
    total, every = cfg.train.steps, cfg.record.checkpoint_every_steps
    plateaus = {s: base_plateau(root, budget, s) for s in seeds}
    latest_start = max(p.start_step if p.found else total for p in plateaus.values())
    cap = int((total * (1 - budget.min_window_fraction)) // every * every)
    step = min(int(math.ceil(latest_start / every) * every), cap)
    in_train = all(p.found and p.start_step <= step for p in plateaus.values())
    held = {s: held_out_plateau(root, budget, s) for s in seeds}
    in_held = all(p is not None and p.found and p.start_step <= step for p in held.values())
    return Window(
        step,
        total,
        in_train or in_held,
        {s: p.to_dict() for s, p in plateaus.items()},
        {s: None if p is None else p.to_dict() for s, p in held.items()},
        "train loss" if in_train else "held-out loss" if in_held else "none",
    )


def prepare_base_runs(
    out_dir: str | Path,
    budget: str,
    seeds: Sequence[int],
    *,
    reuse: bool,
    jobs: int,
    progress: bool,
    host: HostSettings | None = None,
) -> tuple[Budget, Path, Window]:
    """The preamble of every claim: the budget, the output root, the base runs of ``seeds`` trained (or
    reused from the cache), and their shared branch window."""
    b = get_budget(budget)
    out_dir = Path(out_dir)
    ensure_runs(
        out_dir, [base_spec(b, s) for s in seeds], jobs=jobs, reuse=reuse, progress=progress, host=host
    )
    return b, out_dir, shared_window(out_dir, b, seeds)
