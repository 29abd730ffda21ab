"""``trajlab demo``: the README's main command, the paper's measurements end to end in minutes.

1. Train ``fashion-resnet20`` on a subset at a constant lr with the trajectory recorded (snapshots every
   few steps, batch log) and online EMA and two-point averages (reused when ``--out`` already holds a
   completed run of the same resolved config: the run directory is named by the config's hash).
2. From the stored snapshots only: line profiles of a training batch along its gradient (with a held-out
   control) at several checkpoints, a loss matrix and the batch-memory curve, post-hoc averages (two-point
   by gap, EMA, SWA; BN recalibrated), and a noisy-quadratic-model fit (h from lr* and the HVP curvature)
   with its predictions next to the measurements. Written to ``RUN/analysis/`` (reused when present) by
   :class:`~trajlab.experiments.demo_analysis.Analysis`.
3. The HTML report (:func:`trajlab.reports.html.build_report`) and a short summary table.

``budget="tiny"`` does all of it in seconds on synthetic data (for tests).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trajlab.config import ConfigError, HostSettings, RunConfig, resolve_config
from trajlab.experiments.demo_analysis import Analysis, DemoBudget, _num, config_hash, fit_theory
from trajlab.reports import html as report
from trajlab.runs.runner import RunDirError, run_training

# The measurements live in demo_analysis; these names stay importable from here.
__all__ = [
    "BUDGETS",
    "Analysis",
    "DemoBudget",
    "DemoResult",
    "config_hash",
    "demo_config",
    "fit_theory",
    "run_demo",
]

log = logging.getLogger(__name__)


_TINY_DATA = "data.synthetic={n = 256, n_test = 128, num_classes = 4, channels = 1, size = 16, seed = 3}"
BUDGETS = {
    # seconds on synthetic data (tests)
    "tiny": DemoBudget(
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
    "default": DemoBudget(
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


def run_demo(
    out: str | Path,
    *,
    data_dir: str | None = None,
    budget: str = "default",
    command: list[str] | None = None,
    fresh: bool = False,
    host: HostSettings | None = None,
) -> DemoResult:
    """Train (or reuse), analyse the stored trajectory, and write ``OUT/report.html``.

    Args:
        out: output directory; the run goes to ``OUT/run-<config hash>``.
        data_dir: where the dataset lives (default: the usual places).
        budget: ``"default"`` (minutes on 2 CPU cores) or ``"tiny"`` (seconds, synthetic data).
        command: the command line, recorded in the run's provenance.
        fresh: delete ``out`` first.
        host: the machine's settings (where else to look for data, threads, the CPU kernel).

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
    host = host or HostSettings()
    host.apply_threads(cfg.train.num_threads)
    t0 = time.perf_counter()
    reused = _train_or_reuse(cfg, run_dir, command, host)
    result.timings_s["train"] = time.perf_counter() - t0
    analysis = Analysis(cfg, run_dir, b, progress=cfg.train.progress, host=host)
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


def _train_or_reuse(cfg: RunConfig, run_dir: Path, command: list[str] | None, host: HostSettings) -> bool:
    """Train into ``run_dir`` unless it holds this config's completed run; resume an interrupted one."""
    if (run_dir / "summary.json").is_file():
        saved = json.loads((run_dir / "config.json").read_text())
        if config_hash(saved) == config_hash(cfg):
            log.info("reusing the completed run %s", run_dir)
            return True
    if run_dir.exists():
        try:
            run_training(None, run_dir, resume=True, command=command, host=host)
            return False
        except RunDirError as e:
            log.info("cannot resume %s (%s); training it again", run_dir, e)
            shutil.rmtree(run_dir)
    run_training(cfg, run_dir, command=command, host=host)
    return False


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
