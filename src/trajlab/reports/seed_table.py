"""Tables over several runs: every evaluated model's test metric at each eval step, mean ± std over runs.

Used by ``trajlab runs table RUN...`` for seed sweeps (runs that differ only by ``train.seed``): the
live model (raw running-stats BN and recalibrated), each online average (recalibrated BN unless the run
said otherwise), at every evaluation step the runs share.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trajlab.train.metrics import read_metrics

LIVE = "live (running BN)"


def _models(row: dict[str, Any], metric: str) -> dict[str, float]:
    out = {}
    if metric in row:
        out[LIVE] = row[metric]
    for key, value in row.items():
        if key.endswith("/" + metric):
            name = key[: -len(metric) - 1]
            out["live (recalibrated BN)" if name == "live_recal" else name] = value
    return out


def seed_table(
    run_dirs: Sequence[str | os.PathLike], *, metric: str = "test_acc", steps: Sequence[int] | None = None
) -> dict[str, Any]:
    """``{"steps", "models", "cells": {model: {step: {"mean", "std", "n", "values"}}}, "runs"}``.

    Only evaluation steps present in every run are used (or ``steps`` when given). std is the sample
    standard deviation (n - 1), NaN for n = 1.
    """
    if not run_dirs:
        raise ValueError("give at least one run directory")
    per_run: list[dict[int, dict[str, float]]] = []
    for d in run_dirs:
        path = Path(d) / "metrics.jsonl"
        if not path.is_file():
            raise ValueError(f"{d} has no metrics.jsonl (not a trajlab run directory?)")
        evals = [r for r in read_metrics(path) if r.get("kind") == "eval"]
        per_run.append({int(r["step"]): _models(r, metric) for r in evals})
    common = sorted(set.intersection(*(set(r) for r in per_run)))
    chosen = [s for s in (steps or common) if s in common]
    if not chosen:
        raise ValueError(f"the runs share no evaluation step{' among ' + str(list(steps)) if steps else ''}")
    models: list[str] = []
    for r in per_run:
        for m in r[chosen[-1]]:
            if m not in models:
                models.append(m)
    cells: dict[str, dict[int, dict[str, Any]]] = {}
    for m in models:
        cells[m] = {}
        for s in chosen:
            values = [float(r[s][m]) for r in per_run if m in r[s]]
            cells[m][s] = {
                "mean": statistics.fmean(values) if values else math.nan,
                "std": statistics.stdev(values) if len(values) > 1 else math.nan,
                "n": len(values),
                "values": values,
            }
    return {
        "metric": metric,
        "steps": chosen,
        "models": models,
        "cells": cells,
        "runs": [str(d) for d in run_dirs],
    }


def format_seed_table(table: dict[str, Any], *, digits: int = 4) -> str:
    """Aligned text: one row per model, one column per step, ``mean ± std (n)``."""
    steps = table["steps"]
    header = ["model"] + [f"step {s}" for s in steps]
    rows = [header]
    for m in table["models"]:
        row = [m]
        for s in steps:
            c = table["cells"][m][s]
            std = "" if math.isnan(c["std"]) else f" ± {c['std']:.{digits}f}"
            row.append(f"{c['mean']:.{digits}f}{std} (n={c['n']})")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    return f"{table['metric']} over {len(table['runs'])} runs\n" + "\n".join(lines)
