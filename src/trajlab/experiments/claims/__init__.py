"""Claim reproductions (``../shared/docs/paper.md`` section 5): one driver per claim A-H.

Every driver has the signature ``run_claim_X(out_dir, *, budget="small", seeds=(0, 1, 2), reuse=True,
jobs=1, progress=True) -> dict``, writes ``out_dir/claim_X.json`` (numbers, verdict with its criterion,
n, seeds, config, provenance) and PNG figures, and trains what it needs into the run cache
``out_dir/runs/`` (see :mod:`trajlab.experiments.claims.cache`). One recorded base run per seed feeds A, B,
C, E, F and G; branches of it (lr/2, reduced lr, 1/t cooldown, another batch order) feed C-G. H needs no
training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from trajlab.config import HostSettings
from trajlab.experiments.claims.alignment import run_claim_G
from trajlab.experiments.claims.averaging import F_BRACKET, run_claim_E, run_claim_F
from trajlab.experiments.claims.base_runs import prepare_base_runs
from trajlab.experiments.claims.budgets import BUDGET_NAMES, BUDGETS, Budget, get_budget
from trajlab.experiments.claims.lines import curvature_estimate, run_claim_A, run_claim_B
from trajlab.experiments.claims.nqm import run_claim_H
from trajlab.experiments.claims.predictions import predicted_lrs
from trajlab.experiments.claims.stationarity import run_claim_C
from trajlab.experiments.claims.trajectories import run_claim_D

CLAIMS: dict[str, Callable[..., dict[str, Any]]] = {
    "A": run_claim_A,
    "B": run_claim_B,
    "C": run_claim_C,
    "D": run_claim_D,
    "E": run_claim_E,
    "F": run_claim_F,
    "G": run_claim_G,
    "H": run_claim_H,
}


def prepare_runs(
    out_dir: str | Path,
    *,
    budget: str = "small",
    seeds: Sequence[int] = (0, 1, 2),
    claims: Sequence[str] = ("A", "B", "C", "D", "E", "F", "G"),
    reuse: bool = True,
    jobs: int = 1,
    progress: bool = True,
    host: HostSettings | None = None,
) -> None:
    """Train the runs that ``claims`` need, ``jobs`` at a time: the base runs, claim A's probes (for h,
    when a reduced-lr run or the curvature is needed), then the branches at once (so independent runs
    share the workers). Which branches each claim reads: C lr/2, reduced lr (and the extension when the
    budget has one); D the reorder run; E lr/2; F reduced lr (and 2x, 1/2x of it) and cooldown; G lr/2
    and reduced lr."""
    from trajlab.experiments.claims.budgets import (
        cooldown_spec,
        extension_spec,
        lr_half_spec,
        reduced_spec,
        reorder_spec,
    )
    from trajlab.experiments.claims.cache import ensure_runs

    wanted = set(claims)
    b, out_dir, window = prepare_base_runs(
        out_dir, budget, seeds, reuse=reuse, jobs=jobs, progress=progress, host=host
    )
    t = window.branch_step
    first = [lr_half_spec(b, s, t) for s in seeds] if wanted & {"C", "E", "G"} else []
    first += [reorder_spec(b, s, t) for s in seeds] if "D" in wanted else []
    if b.extend_to_steps and "C" in wanted:
        first += [extension_spec(b, s) for s in seeds]
    if not wanted & {"A", "B", "C", "F", "G"}:  # nothing reads the curvature
        ensure_runs(out_dir, first, jobs=jobs, reuse=reuse, progress=progress, host=host)
        return
    if jobs > 1 and first:  # claim A's probes run here while jobs - 1 workers train the first branches
        import threading

        worker = threading.Thread(
            target=ensure_runs,
            args=(out_dir, first),
            kwargs={"jobs": jobs - 1, "reuse": reuse, "progress": False, "spawn": True},
        )
        worker.start()
        curv = curvature_estimate(out_dir, budget, seeds, reuse=reuse, jobs=1, progress=progress, host=host)
        worker.join()
    else:
        ensure_runs(out_dir, first, jobs=jobs, reuse=reuse, progress=progress, host=host)
        curv = curvature_estimate(
            out_dir, budget, seeds, reuse=reuse, jobs=jobs, progress=progress, host=host
        )
    pred = predicted_lrs(b, curv["h"])
    rest = [reduced_spec(b, s, t, pred["reduced_lr"]) for s in seeds] if wanted & {"C", "F", "G"} else []
    if "F" in wanted:
        rest += [cooldown_spec(b, s, t, pred["cooldown_time_scale_steps"]) for s in seeds]
        # claim F's bracket: runs at 2x and 1/2x the predicted lr (averaging.F_BRACKET)
        rest += [
            reduced_spec(b, s, t, pred["reduced_lr"] * f, label=f"reduced_{name}")
            for s in seeds
            for name, f in F_BRACKET.items()
        ]
    ensure_runs(out_dir, rest, jobs=jobs, reuse=reuse, progress=progress, host=host)


__all__ = [
    "BUDGETS",
    "BUDGET_NAMES",
    "CLAIMS",
    "Budget",
    "get_budget",
    "prepare_runs",
    "run_claim_A",
    "run_claim_B",
    "run_claim_C",
    "run_claim_D",
    "run_claim_E",
    "run_claim_F",
    "run_claim_G",
    "run_claim_H",
]
