"""Shared pieces of the claim drivers: reading metrics, statistics over seeds, verdicts, figures and the
result file. Runs are read through :class:`trajlab.runs.RecordedRun` (held-out batches, "recalibrate BN,
then evaluate").

Verdicts are one of :data:`VERDICTS`; every result file states the criterion it applied, its inputs (n,
seeds, config) and its provenance.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)


# ------------------------------------------------------------------------------------------ statistics


def mean_std(values: Iterable[float]) -> dict[str, float]:
    """``{"mean", "std", "n"}`` of the finite values (std with ddof=1; 0 for a single value)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": float(x.mean()), "std": float(x.std(ddof=1)) if x.size > 1 else 0.0, "n": int(x.size)}


def significantly_positive(values: Sequence[float], z: float = 2.0) -> bool:
    """True when the mean exceeds ``z`` standard errors (over the values, e.g. seeds) and is > 0.

    A single value counts only through its sign (no standard error to compare with).
    """
    s = mean_std(values)
    if s["n"] == 0 or not s["mean"] > 0:
        return False
    if s["n"] == 1:
        return True
    return s["mean"] > z * s["std"] / math.sqrt(s["n"])


def verdict(
    checks: Mapping[str, bool | None],
    criterion: str,
    *,
    required_n: int = 1,
    n: int = 1,
    preconditions: Mapping[str, bool] | None = None,
) -> dict:
    """Combine named checks into a verdict.

    ``inconclusive`` when a precondition of the claim does not hold (e.g. the phase is not stationary:
    then a failed check says nothing about the claim; the checks are still reported); otherwise
    ``reproduced`` when every check is True and ``n >= required_n``, ``not reproduced`` when some check
    is False, ``inconclusive`` when a check could not be decided (None) or ``n < required_n``.
    """
    values = list(checks.values())
    pre = dict(preconditions or {})
    if not all(pre.values()):
        out = INCONCLUSIVE
    elif any(v is False for v in values):
        out = NOT_REPRODUCED
    elif any(v is None for v in values) or n < required_n:
        out = INCONCLUSIVE
    else:
        out = REPRODUCED
    return {
        "verdict": out,
        "criterion": criterion,
        "preconditions": pre,
        "checks": dict(checks),
        "n": n,
        "required_n": required_n,
    }


# ------------------------------------------------------------------------------------------ run files


def metric_rows(run_dir: str | Path, kind: str) -> list[dict[str, Any]]:
    """Rows of a run's ``metrics.jsonl`` with ``"kind": kind`` (``train`` or ``eval``), in file order."""
    from trajlab.train.metrics import read_metrics

    return [r for r in read_metrics(Path(run_dir) / "metrics.jsonl") if r.get("kind") == kind]


def eval_series(run_dir: str | Path, key: str) -> dict[int, float]:
    """``{step: value}`` of an eval metric (e.g. ``live_recal/test_acc``)."""
    return {int(r["step"]): float(r[key]) for r in metric_rows(run_dir, "eval") if key in r}


def write_result(
    out_dir: str | Path, claim: str, doc: dict[str, Any], seeds: Sequence[int]
) -> dict[str, Any]:
    """Add provenance and write ``out_dir/claim_<claim>.json`` atomically; return the document."""
    from trajlab.provenance import provenance, write_json_atomic

    doc = {"claim": claim, **doc, "seeds": list(seeds), "provenance": provenance(seed=None, device="cpu")}
    write_json_atomic(Path(out_dir) / f"claim_{claim}.json", _jsonable(doc))
    log.info("claim %s: %s", claim, doc.get("verdict", {}).get("verdict"))
    return doc


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return value


def new_figure(ncols: int = 1, width: float = 5.0, height: float = 3.6) -> tuple[Any, Any]:
    """A matplotlib (Agg) figure with ``ncols`` axes side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, list(axes[0])


def save_figure(fig: Any, path: str | Path) -> str:
    """Save and close ``fig``; return its file name, which the result JSON written beside it records (a
    path would name the machine's working directory and go stale when the results are copied)."""
    import matplotlib.pyplot as plt

    from trajlab.files import save_figure_atomic

    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)  # temp file + rename, never through a symlink
    plt.close(fig)
    return Path(path).name
