"""The demo's measurements on a recorded run (:class:`Analysis`) and the noisy quadratic model fitted to them.

Split from :mod:`trajlab.experiments.demo`, which orchestrates (train or reuse, analyse, report, summary):
this module holds what is measured from the stored snapshots and written to ``RUN/analysis/``. It also
holds :class:`DemoBudget` (how much the demo trains and measures) and :func:`config_hash` (the key the
analysis is stamped with), so that it never imports the orchestration back. :mod:`trajlab.experiments.demo`
re-exports its public names.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn.functional as F

from trajlab import files
from trajlab.config import HostSettings, RunConfig
from trajlab.provenance import provenance, write_json_atomic
from trajlab.reports import html as report
from trajlab.runs import RecordedRun, build
from trajlab.runs.runner import RunDirError


@dataclass(frozen=True)
class DemoBudget:
    """What the demo trains and measures. Steps are optimizer steps; the lr is per step (batch 128)."""

    preset: str
    overrides: tuple[str, ...]
    probe_checkpoints: int  # line profiles at this many snapshots, evenly spread
    probe_points: int  # lrs per adaptive line profile
    matrix_checkpoints: int  # loss-matrix columns: the last this-many snapshots
    matrix_used_batches: int  # training batches B_u (rows) used inside that window
    heldout_batches: int  # held-out test batches (rows; the first is the line probes' control)
    bn_batches: int  # BN recalibration batches for post-hoc averages


# Keys that do not change what the run computes; left out of the cache key.
_UNCACHED = (("train", "num_threads"), ("train", "progress"), ("data", "data_dir"))


def config_hash(cfg: RunConfig | dict[str, Any]) -> str:
    """12 hex digits of the sha256 of the resolved config (threads, progress bar, data_dir left out)."""
    c = cfg.to_dict() if isinstance(cfg, RunConfig) else json.loads(json.dumps(cfg))
    for section, key in _UNCACHED:
        c.get(section, {}).pop(key, None)
    return hashlib.sha256(json.dumps(c, sort_keys=True).encode()).hexdigest()[:12]


class Analysis:
    """The measurements on a recorded run, each written once to ``RUN/analysis/`` (reused if present)."""

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: Path,
        budget: DemoBudget,
        *,
        progress: bool = True,
        host: HostSettings | None = None,
    ) -> None:
        self.cfg, self.run_dir, self.budget, self.progress = cfg, run_dir, budget, progress
        self.dir = run_dir / report.ANALYSIS_DIR
        spec = json.loads(json.dumps({"budget": asdict(budget), "config": config_hash(cfg)}))
        if (self.dir / "spec.json").is_file() and json.loads((self.dir / "spec.json").read_text()) != spec:
            shutil.rmtree(self.dir)  # measured with other settings: measure again
        write_json_atomic(self.dir / "spec.json", spec)
        self.device = build.resolve_device(cfg.train.device)
        self.run = RecordedRun(run_dir, device=self.device, host=host, bn_batches=budget.bn_batches)
        self.snapshots = [s for s in self.run.snapshot_steps if s > 0]
        if len(self.snapshots) < 3:
            raise RunDirError(f"{run_dir} holds {len(self.snapshots)} snapshots after step 0; need >= 3")
        self.heldout = self.run.heldout_batches(budget.heldout_batches)

    def stages(self) -> list[tuple[str, Callable[[], None]]]:
        """(name, function) of each measurement, in order (later ones read earlier results)."""
        return [
            ("probes", self.line_probes),
            ("loss matrix", self.loss_matrix),
            ("post hoc", self.post_hoc),
            ("theory", self.theory),
        ]

    # ---- helpers
    def _bar(self, total: int, desc: str) -> Any:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, disable=not self.progress, leave=False)

    def _done(self, name: str) -> bool:
        return (self.dir / name).is_file()

    def _stamp(self, stage: str) -> None:
        """Record how ``stage`` was computed (code version, device, time) in ``analysis/provenance.json``."""
        path = self.dir / report.ANALYSIS_PROVENANCE
        stamps = json.loads(path.read_text()) if path.is_file() else {}
        stamps[stage] = provenance(seed=self.cfg.train.seed, device=self.device)
        write_json_atomic(path, stamps)

    # ---- stages
    def line_probes(self) -> None:
        """Line profiles of B_t (the batch step t used) at evenly spread snapshots t, held-out control."""
        from trajlab.probes import line_profile

        if self._done(report.LINE_PROBES):
            return
        picks = np.unique(np.linspace(0, len(self.snapshots) - 1, self.budget.probe_checkpoints).round())
        lr = self.cfg.optim.lr
        lines = []
        with self._bar(len(picks), "line probes") as bar:
            for i in picks.astype(int):
                step = self.snapshots[i]
                profile = line_profile(
                    self.run.load_weights(step),
                    F.cross_entropy,
                    self.run.batch(step),
                    eval_batches={"held-out": self.heldout[0]},
                    bn="batch",
                    num_points=self.budget.probe_points,
                )
                record = {
                    "step": step,
                    "lr": lr,
                    "lr_star_over_lr": profile.lr_star / lr,
                    **profile.to_dict(),
                }
                lines.append(json.dumps(record))
                bar.update()
        _write_text(self.dir / report.LINE_PROBES, "".join(line + "\n" for line in lines))
        self._stamp("line probes")

    def loss_matrix(self) -> None:
        """Losses of used and held-out batches over the last snapshots, and the batch-memory curve."""
        from trajlab.probes import batch_memory, loss_matrix

        if self._done(report.LOSS_MATRIX) and self._done(report.BATCH_MEMORY):
            return
        steps = self.snapshots[-self.budget.matrix_checkpoints :]
        inner = steps[1:-1] or steps
        picks = np.unique(np.linspace(0, len(inner) - 1, self.budget.matrix_used_batches + 2)[1:-1].round())
        rows: dict[str, Any] = {f"B_{inner[int(i)]}": inner[int(i)] for i in picks}
        rows.update({f"held-out {i}": b for i, b in enumerate(self.heldout)})
        with self._bar(1, "loss matrix") as bar:
            matrix = loss_matrix(self.run, rows, steps, self.run.new_model, device=self.device)
            bar.update()
        memory = batch_memory(matrix).to_dict()
        memory["decay_rate_per_step"] = _decay_rate(memory["steps_since"], memory["advantage"])
        write_json_atomic(self.dir / report.LOSS_MATRIX, _finite(matrix.to_dict()))
        write_json_atomic(self.dir / report.BATCH_MEMORY, _finite(memory))
        self._stamp("loss matrix")

    def _post_hoc_rules(self, last: int, every: int) -> list[Any]:
        from trajlab.averaging import EMA, SWA, TwoPoint

        gaps = [every * 2**i for i in range(12) if every * 2**i < last]
        rules: list[Any] = [TwoPoint(gap_steps=k) for k in gaps]
        rules += [EMA(decay=d) for d in self.cfg.averaging.ema_decays]
        rules.append(SWA(start_step=(last // 2) // every * every))
        return rules

    def post_hoc(self) -> None:
        """Two-point averages by gap, EMA and SWA at the last snapshot, BN recalibrated, on the test set."""
        from trajlab.averaging import post_hoc_many

        if self._done(report.POST_HOC):
            return
        last = self.snapshots[-1]
        every = int(np.gcd.reduce(np.asarray(self.run.snapshot_steps)))
        rules = self._post_hoc_rules(last, every)
        states = post_hoc_many(self.run, rules, [last], every, device=self.device)
        rows = []
        with self._bar(len(rules) + 2, "post-hoc averages") as bar:
            rows.append(
                {
                    "name": "last iterate",
                    "rule": "none",
                    "bn": "running",
                    **_acc(self.run.evaluate(last, "raw")),
                }
            )
            rows.append(
                {
                    "name": "last iterate",
                    "rule": "none",
                    "bn": "recalibrated",
                    **_acc(self.run.evaluate(last)),
                }
            )
            bar.update(2)
            for rule in rules:
                evaluation = self.run.evaluate(states[(rule.name, last)])
                row = {"name": rule.name, "rule": repr(rule), "bn": "recalibrated", **_acc(evaluation)}
                if hasattr(rule, "gap_steps") and getattr(rule, "points", 2) == 2:
                    row["gap_steps"] = int(rule.gap_steps)
                rows.append(row)
                bar.update()
        write_json_atomic(
            self.dir / report.POST_HOC,
            {
                "at_step": last,
                "every_steps": every,
                "bn_batches": self.budget.bn_batches,
                "test_images": len(self.run.test_data),
                "rows": rows,
            },
        )
        self._stamp("post hoc")

    def theory(self) -> None:
        """Fit the effective curvature, then predict the two-point gain by gap and the EMA's reduced lr."""
        if self._done(report.THEORY):
            return
        probes = [json.loads(x) for x in (self.dir / report.LINE_PROBES).read_text().splitlines() if x]
        post = json.loads((self.dir / report.POST_HOC).read_text())
        metrics = [json.loads(x) for x in (self.run_dir / "metrics.jsonl").read_text().splitlines() if x]
        result = fit_theory(self.cfg, probes, post, metrics)
        result["provenance"] = provenance(seed=self.cfg.train.seed, device=self.device)
        write_json_atomic(self.dir / report.THEORY, _finite(result))
        self._stamp("theory")


def fit_theory(
    cfg: RunConfig, probes: list[dict[str, Any]], post_hoc: dict[str, Any], metrics: list[dict[str, Any]]
) -> dict[str, Any]:
    """The noisy quadratic model fitted to the probes, and its predictions next to the measurements.

    The curvature h comes from lr* (h = 1/lr*) and the HVP curvature along the gradient
    (:func:`trajlab.theory.fit`). The model's shape (the gain of a two-point average as a function of its
    gap) is then a prediction; its scale (the last iterate's excess loss) is not measured by the probes, so
    one amplitude is fitted to the measured gains by least squares and the report says so.
    """
    from trajlab.theory import NoisyQuadratic, ema_vs_reduced_lr, fit, two_point_gain

    lr, mu = cfg.optim.lr, cfg.optim.momentum
    best = [p["lr_star"] for p in probes if p.get("bracketed") and _pos(p.get("lr_star"))]
    curv = [p["curvature_hvp"] for p in probes if _pos(p.get("curvature_hvp"))]
    sources = {
        "best_lrs": best if len(best) >= 2 else None,
        "gradient_curvatures": curv if len(curv) >= 2 else None,
    }
    fitted = fit(lr, mu, **sources, bootstrap=200)
    h = fitted.curvature_
    out: dict[str, Any] = {
        "fit": {
            "curvature h": h,
            "curvature standard error": fitted.curvature_se_,
            "lr": lr,
            "momentum": mu,
            "relaxation steps (1-mu)/(lr h)": (1 - mu) / (lr * h),
            "line probes used (lr*)": len(best),
            "line probes used (HVP)": len(curv),
            "how": {
                "curvature h": "inverse-variance mean of 1/lr* and g^T H g/|g|^2 over the probed checkpoints",
                "curvature standard error": "bootstrap over checkpoints",
            },
        }
    }
    rows = post_hoc.get("rows", [])
    base = next((r for r in rows if r.get("rule") == "none" and r.get("bn") == "recalibrated"), None)
    two = [r for r in rows if r.get("gap_steps") is not None]
    nqm = NoisyQuadratic(h, 1.0, lr, mu)
    if base and two:
        gaps = [int(r["gap_steps"]) for r in two]
        measured = np.array([base["test_loss"] - r["test_loss"] for r in two])
        pred = two_point_gain(nqm, gaps)
        shape = 1.0 - np.asarray(pred["ratio"])
        amplitude = max(float(measured @ shape / (shape @ shape)), 0.0) if shape @ shape > 0 else 0.0
        half = 1.0 - pred["half_lr_excess_loss"] / pred["sgd_excess_loss"]
        out["two_point"] = {
            "gaps": gaps,
            "measured_gain": measured.tolist(),
            "predicted_ratio": np.asarray(pred["ratio"]).tolist(),
            "predicted_gain": (amplitude * shape).tolist(),
            "half_lr_gain": amplitude * half,
            "amplitude (fitted last-iterate excess loss)": amplitude,
            "note": "Prediction: shape from the fitted h, one amplitude fitted to the measured gains.",
        }
        out["fit"]["last-iterate excess loss (fitted amplitude)"] = amplitude
        if amplitude > 0:
            nqm = NoisyQuadratic(h, amplitude / nqm.excess_loss(), lr, mu)
    for decay in cfg.averaging.ema_decays[:1]:
        evals = [r for r in metrics if r.get("kind") == "eval"]
        from trajlab.averaging import EMA

        name = EMA(decay=decay).name
        start_gap = max(float(evals[0]["test_loss"]) - float(evals[-1].get("live_recal/test_loss", 0)), 1e-6)
        prediction = ema_vs_reduced_lr(nqm, decay, int(evals[-1]["step"]), math.sqrt(2 * start_gap / h))
        out["ema"] = {
            "name": name,
            "decay": decay,
            "time constant steps 1/(1-decay)": 1 / (1 - decay),
            "reduced_lr": prediction["reduced_lr"],
            "matched_lr": prediction["matched_lr"],
            "measured EMA test loss (last eval)": _num(evals[-1].get(f"{name}/test_loss")),
            "measured last iterate test loss, BN recal. (last eval)": _num(
                evals[-1].get("live_recal/test_loss")
            ),
            "prediction": {
                k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in prediction.items()
            },
        }
    return out


# ---------------------------------------------------------------------------------------- small helpers


def _pos(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def _num(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _acc(evaluation: Any) -> dict[str, float]:
    return {"test_loss": float(evaluation.loss), "test_acc": float(evaluation.acc)}


def _decay_rate(ks: list[int], advantage: list[float]) -> float:
    """Per-step decay rate r of advantage(k) ~ A exp(-r k), k > 0 (log-linear fit); nan if not decaying."""
    pts = [(k, a) for k, a in zip(ks, advantage) if k > 0 and a > 0]
    if len(pts) < 2:
        return math.nan
    k, a = np.array(pts, dtype=float).T
    slope = np.polyfit(k, np.log(a), 1)[0]
    return float(-slope) if slope < 0 else math.nan


def _finite(obj: Any) -> Any:
    """JSON-safe copy: nan/inf become None (strict JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _write_text(path: Path, text: str) -> None:
    files.make_dirs(path.parent)
    files.write_text_atomic(path, text)  # temp file (O_EXCL | O_NOFOLLOW) + rename in the same directory
