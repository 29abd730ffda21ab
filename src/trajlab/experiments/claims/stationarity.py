"""Where the constant-lr phase has plateaued (claim C), and the shared branch window of claims E and F.

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

from trajlab.experiments.claims import common
from trajlab.experiments.claims.budgets import Budget, base_spec
from trajlab.experiments.claims.common import read_metrics


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
    rows = read_metrics(base_spec(budget, seed).run_dir(root), "train")
    windows = budget.plateau_windows
    if extended:
        from trajlab.experiments.claims.budgets import extension_spec

        last = rows[-1]["step"]
        more = read_metrics(extension_spec(budget, seed).run_dir(root), "train")
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
    out_dir: str | Path, budget: str, seeds: Sequence[int], *, reuse: bool, jobs: int, progress: bool
) -> tuple[Budget, Path, Window]:
    """The preamble of every claim: the budget, the output root, the base runs of ``seeds`` trained (or
    reused from the cache), and their shared branch window."""
    from trajlab.experiments.claims.budgets import get_budget
    from trajlab.experiments.claims.runs import ensure_runs

    b = get_budget(budget)
    out_dir = Path(out_dir)
    ensure_runs(out_dir, [base_spec(b, s) for s in seeds], jobs=jobs, reuse=reuse, progress=progress)
    return b, out_dir, shared_window(out_dir, b, seeds)


# ------------------------------------------------------------------------------------------ claim C


def _distance_level(run_dir: Path, start: int, end: int) -> dict[str, Any]:
    """RMS distance of the snapshots in [start, end] from their own mean (parameters only)."""
    import torch

    from trajlab.trajectory import TrajectoryStore

    store = TrajectoryStore(run_dir)
    steps = [s for s in store.steps() if start <= s <= end]
    states = [store.load(s) for s in steps]
    keys = [k for k in states[0] if states[0][k].is_floating_point() and "running_" not in k]
    mean = {k: torch.stack([st[k].double() for st in states]).mean(0) for k in keys}
    dist = [float(sum(((st[k].double() - mean[k]) ** 2).sum() for k in keys)) ** 0.5 for st in states]
    return {"steps": steps, "distance": dist, "rms": float(np.sqrt(np.mean(np.square(dist))))}


def c_verdict(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Claim C's verdict: plateau reached (every seed), and plateau loss and spread grow with the lr."""

    def increasing(r: dict[str, Any], key: str) -> bool:
        order = sorted(r["levels"], key=lambda x: x["lr"])
        vals = [x[key] for x in order]
        return all(a < b for a, b in zip(vals, vals[1:]))

    found = [r.get("plateau_extended", r["plateau"])["found"] for r in per_seed.values()]
    checks = {
        "train loss plateaus at constant lr (every seed; extended runs when there are)": True
        if all(found)
        else None,
        "plateau train loss grows with lr (every seed)": all(
            increasing(r, "train_loss") for r in per_seed.values()
        ),
        "distance from the run's mean grows with lr (every seed)": all(
            increasing(r, "distance_rms") for r in per_seed.values()
        ),
    }
    out = common.verdict(checks, "all of: " + "; ".join(checks), n=len(per_seed), required_n=3)
    # Reported, not a check (the claim is about the train loss): does the held-out loss plateau?
    held = [r.get("plateau_held_out") for r in per_seed.values()]
    out["held_out_loss_plateaus_every_seed"] = all(h is not None and h["found"] for h in held)
    out["held_out_plateau_start_steps"] = [h["start_step"] if h and h["found"] else None for h in held]
    lrs = sorted({x["lr"] for r in per_seed.values() for x in r["levels"]})
    for key in ("train_loss", "distance_rms"):
        out[key] = {
            f"{lr:g}": common.mean_std(
                [x[key] for r in per_seed.values() for x in r["levels"] if x["lr"] == lr]
            )
            for lr in lrs
        }
    # Linearity in lr: a least-squares line through the seed means, with its R^2.
    x = np.asarray(lrs)
    y = np.asarray([out["train_loss"][f"{lr:g}"]["mean"] for lr in lrs])
    if x.size >= 3:
        a, c = np.polyfit(x, y, 1)
        r2 = 1 - float(((y - (a * x + c)) ** 2).sum()) / float(((y - y.mean()) ** 2).sum() or np.nan)
        out["train_loss_linear_fit"] = {"slope": float(a), "intercept": float(c), "r2": r2}
    return out


def run_claim_C(
    out_dir: str | Path,
    *,
    budget: str = "small",
    seeds: Sequence[int] = (0, 1, 2),
    reuse: bool = True,
    jobs: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Claim C: quasi-stationarity at constant lr, and the plateau level against the lr.

    The plateau of each base run is found from its train loss (:func:`detect_plateau`), also over the
    base run continued to ``extend_to_steps`` when the budget sets it. Levels at three
    constant lrs (the base run, the lr/2 branch and the reduced-lr branch of claim F, all from the same
    checkpoint with identical batches) are measured over the second half of the window: mean train loss
    and the RMS distance of the snapshots from their own mean. Writes ``claim_C.json`` and ``claim_C.png``.
    """
    from trajlab.experiments.claims.averaging import predicted_lrs
    from trajlab.experiments.claims.budgets import extension_spec, lr_half_spec, reduced_spec
    from trajlab.experiments.claims.lines import curvature_estimate
    from trajlab.experiments.claims.runs import ensure_runs

    b, out_dir, window = prepare_base_runs(out_dir, budget, seeds, reuse=reuse, jobs=jobs, progress=progress)
    curv = curvature_estimate(out_dir, budget, seeds, reuse=reuse, jobs=jobs, progress=progress)
    reduced_lr = predicted_lrs(b, curv["h"])["reduced_lr"]
    specs = {
        s: [lr_half_spec(b, s, window.branch_step), reduced_spec(b, s, window.branch_step, reduced_lr)]
        for s in seeds
    }
    extra = [extension_spec(b, s) for s in seeds] if b.extend_to_steps else []
    runs = [x for v in specs.values() for x in v] + extra
    ensure_runs(out_dir, runs, jobs=jobs, reuse=reuse, progress=progress)
    half = window.branch_step + window.length_steps // 2
    per_seed = {}
    for s in seeds:
        levels = []
        for spec in [base_spec(b, s), *specs[s]]:
            run_dir = spec.run_dir(out_dir)
            rows = [r for r in common.read_metrics(run_dir, "train") if r["step"] > half]
            dist = _distance_level(run_dir, half, window.end_step)
            levels.append(
                {
                    "run": spec.name,
                    "lr": spec.config().optim.lr,
                    "train_loss": float(np.mean([r["train_loss"] for r in rows])),
                    "distance_rms": dist["rms"],
                    "distance": dist,
                }
            )
        held = held_out_plateau(out_dir, b, s)
        per_seed[s] = {
            "plateau": base_plateau(out_dir, b, s).to_dict(),
            "plateau_held_out": None if held is None else held.to_dict(),
            "levels": levels,
        }
        if b.extend_to_steps:
            per_seed[s]["plateau_extended"] = base_plateau(out_dir, b, s, extended=True).to_dict()
            per_seed[s]["recalibrated_test_loss"] = {
                **common.eval_series(base_spec(b, s).run_dir(out_dir), "live_recal/test_loss"),
                **common.eval_series(extension_spec(b, s).run_dir(out_dir), "live_recal/test_loss"),
            }
    doc = {
        "budget": budget,
        "window": window.to_dict(),
        "per_seed": per_seed,
        "verdict": c_verdict(per_seed),
        "config": base_spec(b, seeds[0]).config().to_dict(),
        "protocol": "plateau: train-loss window means, drift over [start, end] < 2 SE and < 5% of the level "
        "(base run, and base run + extension); the same test on the recalibrated test loss (reported); "
        "levels over the second half of the window at lr, lr/2 and the reduced lr of claim F",
    }
    doc["figures"] = [_plot_c(out_dir, per_seed)]
    return common.write_result(out_dir, "C", doc, seeds)


def _plot_c(out_dir: Path, per_seed: dict[int, dict[str, Any]]) -> str:
    fig, (ax, ax2) = common.new_figure(2)
    for i, (s, r) in enumerate(per_seed.items()):
        p = r.get("plateau_extended", r["plateau"])
        ax.plot(p["window_ends"], p["window_means"], marker="o", color=f"C{i}", label=f"seed {s}")
        if p["found"]:
            ax.axvline(p["start_step"], color=f"C{i}", ls="--", lw=0.8)
        lv = sorted(r["levels"], key=lambda x: x["lr"])
        ax2.plot(
            [x["lr"] for x in lv], [x["train_loss"] for x in lv], marker="o", color=f"C{i}", label=f"seed {s}"
        )
    ax.set_xlabel("step (window end)")
    ax.set_ylabel("train loss, window mean (dashed: plateau start)")
    ax2.set_xlabel("constant lr")
    ax2.set_ylabel("plateau train loss")
    ax.legend(fontsize=7)
    ax2.legend(fontsize=7)
    return common.save_figure(fig, out_dir / "claim_C.png")
