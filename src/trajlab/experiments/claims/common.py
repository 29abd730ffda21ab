"""Shared pieces of the claim drivers: evaluating weights with recalibrated BatchNorm, held-out batches,
reading metrics, statistics over seeds, verdicts and the result file.

Verdicts are one of :data:`VERDICTS`; every result file states the criterion it applied, its inputs (n,
seeds, config) and its provenance.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

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


def read_metrics(run_dir: str | Path, kind: str) -> list[dict[str, Any]]:
    """Rows of ``metrics.jsonl`` with ``"kind": kind`` (``train`` or ``eval``), in file order."""
    rows = []
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if row.get("kind") == kind:
                rows.append(row)
    return rows


def eval_series(run_dir: str | Path, key: str) -> dict[int, float]:
    """``{step: value}`` of an eval metric (e.g. ``live_recal/test_acc``)."""
    return {int(r["step"]): float(r[key]) for r in read_metrics(run_dir, "eval") if key in r}


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
    """Save and close ``fig``; return the path as a string."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


# ------------------------------------------------------------------------------------------ evaluation


class StateEvaluator:
    """Evaluates state dicts of a run's model on its test set, with or without BN recalibration.

    Recalibration recomputes every BatchNorm's statistics on ``recal_batches`` augmented training batches
    drawn from the run's independent recalibration stream (the same batches the runner's online
    averages use), so every state, the last iterate included, is evaluated the same way.

    Args:
        run_dir: any run of the experiment (data, model and seed are read from its ``config.json``).
        recal_batches: batches for recalibration.
    """

    def __init__(self, run_dir: str | Path, recal_batches: int) -> None:
        from trajlab.experiments import build
        from trajlab.experiments.runner import load_run_config

        self.cfg = load_run_config(run_dir)
        self.device = torch.device("cpu")
        self.train_ds = build.build_train_data(self.cfg)
        self.test_ds = build.build_test_data(self.cfg)
        torch.manual_seed(0)
        self.model = build.build_model_for(self.cfg, self.train_ds)
        if self.cfg.model.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.batches = build.DatasetBatches(
            self.train_ds,
            self.cfg.data,
            batch_size=self.cfg.train.batch_size,
            seed=self.cfg.train.seed,
            device=self.device,
            channels_last=self.cfg.model.channels_last,
        )
        self.recal_batches = recal_batches

    def load(self, state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
        """Load ``state`` into the evaluator's model and return it."""
        self.model.load_state_dict(dict(state))
        return self.model

    def evaluate(self, state: Mapping[str, torch.Tensor], *, recalibrate: bool = True) -> dict[str, float]:
        """``{"loss", "acc"}`` on the test set (BN recalibrated when ``recalibrate``)."""
        from trajlab.averaging import update_bn
        from trajlab.data import iterate_eval
        from trajlab.train.evaluate import evaluate_model

        model = self.load(state)
        if recalibrate:
            update_bn(model, self.batches.recalibration_batches(self.recal_batches), self.recal_batches)

        def test_batches() -> Any:
            return iterate_eval(
                self.test_ds,
                self.cfg.train.eval_batch_size,
                device=self.device,
                channels_last=self.cfg.model.channels_last,
            )

        m = evaluate_model(model, test_batches, device_type=self.device.type)
        return {"loss": float(m["loss"]), "acc": float(m["acc"])}

    def heldout_batches(self, count: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``count`` augmented test-set batches of the training batch size (never trained on).

        They go through the training augmentation, so they differ from training batches only in never
        having been used.
        """
        from trajlab.data import BatchSampler, make_batch

        sampler = BatchSampler(len(self.test_ds), self.cfg.train.batch_size, 104_729 + seed)
        d = self.cfg.data
        return [
            make_batch(
                self.test_ds,
                sampler.indices(i),
                aug_seed=sampler.aug_seed(i) if d.augment else None,
                crop_padding=d.crop_padding,
                flip=d.flip,
                device=self.device,
                channels_last=self.cfg.model.channels_last,
            )
            for i in range(1, count + 1)
        ]
