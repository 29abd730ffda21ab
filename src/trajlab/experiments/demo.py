"""``trajlab demo``: the README's main command, the paper's measurements end to end in minutes.

1. Train ``fashion-resnet20`` on a subset at a constant lr with the trajectory recorded (snapshots every
   few steps, batch log) and online EMA and two-point averages (reused when ``--out`` already holds a
   completed run of the same resolved config: the run directory is named by the config's hash).
2. From the stored snapshots only: line profiles of a training batch along its gradient (with a held-out
   control) at several checkpoints, a loss matrix and the batch-memory curve, post-hoc averages (two-point
   by gap, EMA, SWA; BN recalibrated), and a noisy-quadratic-model fit (h from lr* and the HVP curvature)
   with its predictions next to the measurements. Written to ``RUN/analysis/`` (reused when present).
3. The HTML report (:func:`trajlab.reports.html.build_report`) and a short summary table.

``budget="tiny"`` does all of it in seconds on synthetic data (for tests).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trajlab.config import ConfigError, RunConfig, resolve_config
from trajlab.experiments import build
from trajlab.experiments.runner import RunDirError, run_training
from trajlab.provenance import provenance, write_json_atomic
from trajlab.reports import html as report

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Budget:
    """What the demo trains and measures. Steps are optimizer steps; the lr is per step (batch 128)."""

    preset: str
    overrides: tuple[str, ...]
    probe_checkpoints: int  # line profiles at this many snapshots, evenly spread
    probe_points: int  # lrs per adaptive line profile
    matrix_checkpoints: int  # loss-matrix columns: the last this-many snapshots
    matrix_used_batches: int  # training batches B_u (rows) used inside that window
    heldout_batches: int  # held-out test batches (rows; the first is the line probes' control)
    bn_batches: int  # BN recalibration batches for post-hoc averages


_TINY_DATA = "data.synthetic={n = 256, n_test = 128, num_classes = 4, channels = 1, size = 16, seed = 3}"
BUDGETS = {
    # seconds on synthetic data (tests)
    "tiny": Budget(
        preset="fashion-resnet20",
        overrides=(
            "data.name=synthetic",
            "data.pad_to=0",
            "data.train_subset=0",
            "data.test_subset=0",
            _TINY_DATA,
            "model.width=4",
            "optim.lr=0.05",
            "train.batch_size=32",
            "train.steps=24",
            "train.eval_every_steps=8",
            "train.log_every_steps=4",
            "train.eval_batch_size=64",
            "record.enabled=true",
            "record.snapshots={every_steps = 2}",
            "averaging.ema_decays=[0.9]",
            "averaging.two_point_gaps=[8]",
            "averaging.bn_batches=2",
        ),
        probe_checkpoints=3,
        probe_points=16,
        matrix_checkpoints=8,
        matrix_used_batches=2,
        heldout_batches=2,
        bn_batches=2,
    ),
    # 576 steps (6 epochs of 12,288 images) at lr 0.1: estimated 5-6 minutes in all on 2 idle CPU cores
    # (from component timings: training ~265 s, probes ~35 s, loss matrix ~7 s, post hoc ~20 s, report ~4 s)
    "default": Budget(
        preset="fashion-resnet20",
        overrides=(
            "data.train_subset=12288",
            "data.test_subset=2000",
            "train.epochs=6",
            "train.eval_every_steps=96",
            "train.log_every_steps=16",
            "train.eval_batch_size=500",
            "record.enabled=true",
            "record.snapshots={every_steps = 16}",
            "record.checkpoint_every_steps=96",
            "averaging.ema_decays=[0.99]",
            "averaging.two_point_gaps=[192]",
            "averaging.bn_batches=8",
        ),
        probe_checkpoints=6,
        probe_points=14,
        matrix_checkpoints=12,
        matrix_used_batches=3,
        heldout_batches=3,
        bn_batches=8,
    ),
}
# Keys that do not change what the run computes; left out of the cache key.
_UNCACHED = (("train", "num_threads"), ("train", "progress"), ("data", "data_dir"))


@dataclass
class DemoResult:
    """What ``trajlab demo`` did: the run, the analysis, the report, and a summary table."""

    out_dir: Path
    run_dir: Path | None = None
    report: Path | None = None
    rows: list[tuple[str, str]] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)

    def summary_text(self) -> str:
        """The table printed by ``trajlab demo``."""
        rows = [*self.rows]
        if self.timings_s:
            total = sum(self.timings_s.values())
            parts = ", ".join(f"{k} {v:.0f} s" for k, v in self.timings_s.items())
            rows.append(("time", f"{parts}; total {total:.0f} s"))
        if self.report is not None:
            rows.append(("report", str(self.report.resolve())))
        width = max((len(k) for k, _ in rows), default=0)
        return "\n".join(["trajlab demo", *(f"  {k:<{width}}  {v}" for k, v in rows)])


def demo_config(
    budget: str = "default", data_dir: str | None = None, num_threads: int | None = None
) -> RunConfig:
    """The resolved config of the demo's training run."""
    if budget not in BUDGETS:
        raise ConfigError(f"unknown demo budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    b = BUDGETS[budget]
    overrides = list(b.overrides)
    if data_dir:
        overrides.append(f"data.data_dir={json.dumps(str(data_dir))}")
    if num_threads is None:  # tiny: one thread is fastest for a model this small (and deterministic)
        num_threads = 1 if budget == "tiny" else os.cpu_count() or 1
    overrides.append(f"train.num_threads={num_threads}")
    overrides.append(f"train.progress={'false' if budget == 'tiny' else 'true'}")
    return resolve_config(b.preset, None, overrides)


def config_hash(cfg: RunConfig | dict[str, Any]) -> str:
    """12 hex digits of the sha256 of the resolved config (threads, progress bar, data_dir left out)."""
    c = cfg.to_dict() if isinstance(cfg, RunConfig) else json.loads(json.dumps(cfg))
    for section, key in _UNCACHED:
        c.get(section, {}).pop(key, None)
    return hashlib.sha256(json.dumps(c, sort_keys=True).encode()).hexdigest()[:12]


def run_demo(
    out: str | Path,
    *,
    data_dir: str | None = None,
    budget: str = "default",
    command: list[str] | None = None,
    fresh: bool = False,
) -> DemoResult:
    """Train (or reuse), analyse the stored trajectory, and write ``OUT/report.html``.

    Args:
        out: output directory; the run goes to ``OUT/run-<config hash>``.
        data_dir: where the dataset lives (default: the usual places).
        budget: ``"default"`` (minutes on 2 CPU cores) or ``"tiny"`` (seconds, synthetic data).
        command: the command line, recorded in the run's provenance.
        fresh: delete ``out`` first.

    Returns:
        A :class:`DemoResult` (``summary_text()`` is what the CLI prints).
    """
    out = Path(out)
    cfg = demo_config(budget, data_dir)
    b = BUDGETS[budget]
    if fresh and out.exists():
        shutil.rmtree(out)
    result = DemoResult(out_dir=out, run_dir=out / f"run-{config_hash(cfg)}")
    run_dir = result.run_dir
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    t0 = time.perf_counter()
    reused = _train_or_reuse(cfg, run_dir, command)
    result.timings_s["train"] = time.perf_counter() - t0
    analysis = Analysis(cfg, run_dir, b, progress=cfg.train.progress)
    for name, step in analysis.stages():
        t0 = time.perf_counter()
        step()
        result.timings_s[name] = time.perf_counter() - t0
    t0 = time.perf_counter()
    result.report = report.build_report(
        [run_dir], out / "report.html", title="trajlab demo: fashion-resnet20"
    )
    result.timings_s["report"] = time.perf_counter() - t0
    result.rows = _summary_rows(run_dir, cfg, reused)
    return result


def _train_or_reuse(cfg: RunConfig, run_dir: Path, command: list[str] | None) -> bool:
    """Train into ``run_dir`` unless it holds this config's completed run; resume an interrupted one."""
    if (run_dir / "summary.json").is_file():
        saved = json.loads((run_dir / "config.json").read_text())
        if config_hash(saved) == config_hash(cfg):
            log.info("reusing the completed run %s", run_dir)
            return True
    if run_dir.exists():
        try:
            run_training(None, run_dir, resume=True, command=command)
            return False
        except RunDirError as e:
            log.info("cannot resume %s (%s); training it again", run_dir, e)
            shutil.rmtree(run_dir)
    run_training(cfg, run_dir, command=command)
    return False


class Analysis:
    """The measurements on a recorded run, each written once to ``RUN/analysis/`` (reused if present)."""

    def __init__(self, cfg: RunConfig, run_dir: Path, budget: Budget, *, progress: bool = True) -> None:
        from trajlab.trajectory import TrajectoryStore

        self.cfg, self.run_dir, self.budget, self.progress = cfg, run_dir, budget, progress
        self.dir = run_dir / report.ANALYSIS_DIR
        spec = json.loads(json.dumps({"budget": asdict(budget), "config": config_hash(cfg)}))
        if (self.dir / "spec.json").is_file() and json.loads((self.dir / "spec.json").read_text()) != spec:
            shutil.rmtree(self.dir)  # measured with other settings: measure again
        write_json_atomic(self.dir / "spec.json", spec)
        self.device = build.resolve_device(cfg.train.device)
        self.train_ds = build.build_train_data(cfg)
        self.test_ds = build.build_test_data(cfg)
        self.store = TrajectoryStore(run_dir, dataset=self.train_ds)
        self.snapshots = [s for s in self.store.steps() if s > 0]
        if len(self.snapshots) < 3:
            raise RunDirError(f"{run_dir} holds {len(self.snapshots)} snapshots after step 0; need >= 3")
        self.model = build.build_model_for(cfg, self.train_ds).to(self.device)
        self.heldout = self._heldout_batches(budget.heldout_batches)

    def stages(self) -> list[tuple[str, Callable[[], None]]]:
        """(name, function) of each measurement, in order (later ones read earlier results)."""
        return [
            ("probes", self.line_probes),
            ("loss matrix", self.loss_matrix),
            ("post hoc", self.post_hoc),
            ("theory", self.theory),
        ]

    # ---- helpers
    def _heldout_batches(self, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        from trajlab.data import make_batch

        g = torch.Generator().manual_seed(1234)
        perm = torch.randperm(len(self.test_ds), generator=g)
        size = min(self.cfg.train.batch_size, len(self.test_ds) // max(n, 1))
        return [
            make_batch(self.test_ds, perm[i * size : (i + 1) * size], aug_seed=None, device=self.device)
            for i in range(n)
        ]

    def _bar(self, total: int, desc: str) -> Any:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, disable=not self.progress, leave=False)

    def _load(self, step: int) -> torch.nn.Module:
        self.model.load_state_dict(self.store.load(step, device=self.device))
        return self.model

    def _evaluate(self) -> dict[str, float]:
        from trajlab.train.evaluate import evaluate_model

        def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            return build.iterate_eval(self.test_ds, self.cfg.train.eval_batch_size, device=self.device)

        return evaluate_model(self.model, batches)

    def _recalibrate(self) -> None:
        from trajlab.averaging import update_bn

        batches = build.DatasetBatches(
            self.train_ds,
            self.cfg.data,
            batch_size=self.cfg.train.batch_size,
            seed=self.cfg.train.seed,
            device=self.device,
            channels_last=False,
        )
        update_bn(self.model, batches.recalibration_batches(self.budget.bn_batches))

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
                    self._load(step),
                    F.cross_entropy,
                    self.store.batch(step, device=self.device),
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
            matrix = loss_matrix(
                self.store,
                rows,
                steps,
                lambda: build.build_model_for(self.cfg, self.train_ds),
                device=self.device,
            )
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
        every = int(np.gcd.reduce(np.asarray(self.store.steps())))
        rules = self._post_hoc_rules(last, every)
        states = post_hoc_many(self.store, rules, [last], every, device=self.device)
        rows = []
        with self._bar(len(rules) + 2, "post-hoc averages") as bar:
            self._load(last)
            rows.append({"name": "last iterate", "rule": "none", "bn": "running", **_acc(self._evaluate())})
            self._recalibrate()
            rows.append(
                {"name": "last iterate", "rule": "none", "bn": "recalibrated", **_acc(self._evaluate())}
            )
            bar.update(2)
            for rule in rules:
                self.model.load_state_dict(states[(rule.name, last)])
                self._recalibrate()
                row = {"name": rule.name, "rule": repr(rule), "bn": "recalibrated", **_acc(self._evaluate())}
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
                "test_images": len(self.test_ds),
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


def _acc(metrics: dict[str, float]) -> dict[str, float]:
    return {"test_loss": float(metrics["loss"]), "test_acc": float(metrics["acc"])}


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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _summary_rows(run_dir: Path, cfg: RunConfig, reused: bool) -> list[tuple[str, str]]:
    summary = json.loads((run_dir / "summary.json").read_text())
    final = summary.get("final", {})
    a = run_dir / report.ANALYSIS_DIR
    rows = [("run", f"{run_dir} ({'reused' if reused else 'trained'}, {summary.get('steps')} steps)")]
    acc = [
        f"last iterate {_num(final.get('test_acc')):.4f}",
        f"BN recal. {_num(final.get('live_recal/test_acc')):.4f}",
    ]
    acc += [
        f"{k.split('/')[0]} {_num(v):.4f}"
        for k, v in final.items()
        if k.endswith("/test_acc") and "live" not in k
    ]
    rows.append(("test acc (online)", ", ".join(acc)))
    post = json.loads((a / report.POST_HOC).read_text())
    tp = [r for r in post["rows"] if r.get("gap_steps")]
    if tp:
        best = max(tp, key=lambda r: r["test_acc"])
        base = next(r for r in post["rows"] if r["rule"] == "none" and r["bn"] == "recalibrated")
        rows.append(
            (
                "two-point (post hoc)",
                f"best gap {best['gap_steps']}: acc {best['test_acc']:.4f} vs last iterate "
                f"{base['test_acc']:.4f} (BN recal.), test loss {best['test_loss']:.4f} vs "
                f"{base['test_loss']:.4f}",
            )
        )
    probes = [json.loads(x) for x in (a / report.LINE_PROBES).read_text().splitlines() if x]
    r2 = np.nanmedian([_num((p.get("fit") or {}).get("r2")) for p in probes])
    frac = np.nanmedian([_num(p.get("one_step_fraction")) for p in probes])
    ratio = np.nanmedian([_num(p.get("lr_star_over_lr")) for p in probes])
    rows.append(
        (
            "line probes",
            f"median R² {r2:.3f}, f(lr*)/f(0) {frac:.3f}, lr*/lr {ratio:.1f} ({len(probes)} ckpts)",
        )
    )
    theory = json.loads((a / report.THEORY).read_text())
    h = theory["fit"]["curvature h"]
    line = f"h {h:.3g} ± {theory['fit']['curvature standard error']:.2g}"
    if "ema" in theory:
        line += (
            f"; {theory['ema']['name']} ~ SGD at lr {theory['ema']['reduced_lr']:.3g} (lr {cfg.optim.lr:g})"
        )
    rows.append(("theory (NQM fit)", line))
    return rows
