"""``trajlab demo`` (default): a run that reaches the constant-lr plateau, and theory beside measurement.

1. The constant-lr base run (preset ``fashion-mlp``: a 784-100-100-10 ReLU MLP on all of Fashion-MNIST,
   SGD lr 0.1, momentum 0.9), recorded (snapshots at the two-point end times and gaps, batch log,
   checkpoints every ``checkpoint_every_steps``) with online EMAs 0.99 and 0.998.
2. The project's plateau test (:func:`~trajlab.experiments.claims.base_runs.detect_plateau` on the train
   loss) decides where the plateau starts; the lr ladder (lr/2, lr/4, lr/8, lr/16, identical batches)
   branches from the first checkpoint at or after it and runs to the end.
3. Measurements (:mod:`~trajlab.experiments.plateau_measure`), all read at several end times and averaged:
   the EMAs and the constant-lr run against the ladder (measured equivalent lr, on test loss and
   accuracy), two-point gains by gap from 1 step to past the plateau length, the lr/2 branch's gain; line
   probes with a held-out control and the loss matrix (:class:`~trajlab.experiments.demo_analysis.Analysis`).
4. The multi-timescale heavy-ball theory fitted with what it predicts held out, its predictions beside
   the measurements, ``OUT/summary.json`` and the HTML report.

Runs live in ``OUT/runs/<name>-<config hash>/`` (the claims' run cache: a complete run is reused, an
interrupted one resumed). ``budget="tiny"`` does it all in seconds on synthetic data (tests).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trajlab.config import ConfigError, HostSettings
from trajlab.experiments.claims.base_runs import detect_plateau
from trajlab.experiments.claims.cache import RunSpec, ensure_runs
from trajlab.experiments.demo_analysis import Analysis, DemoBudget
from trajlab.provenance import provenance, write_json_atomic

log = logging.getLogger(__name__)

PLATEAU_RESULT = "plateau.json"  # RUN/analysis/plateau.json: everything the report's first section shows


@dataclass(frozen=True)
class PlateauBudget:
    """How long the plateau demo trains and what it reads. Steps are optimizer steps (batch 128).

    Attributes:
        preset, overrides: the base run's config.
        steps: length T of the base run (and end of every branch).
        eval_every_steps: test-set evaluations of the base run and the branches.
        checkpoint_every_steps: possible branch points.
        plateau_windows: windows of the plateau test.
        ladder_steps: the ladder's length when the plateau starts earlier than T - this.
        min_ladder_steps: the ladder branches no later than T - this (its lowest rung needs time to settle).
        end_span_steps: the two-point end times are every ``end_every_steps`` over the last this-many steps.
        end_every_steps: spacing of the two-point end times (also the snapshot spacing).
        gaps: two-point gaps k; those below ``end_every_steps`` get snapshots of their own.
        ladder_divisors: the ladder's rungs lr/d. Down to lr/64 so that it brackets the predicted equivalent
            lr of EMA 0.998 and half of it (lr/22 and lr/43 on the demo's run; lr/16 did not).
        ema_decays: online EMAs of the base run.
        probe_checkpoints, probe_points, matrix_checkpoints, matrix_used_batches, heldout_batches: as in
            :class:`~trajlab.experiments.demo_analysis.DemoBudget`.
        jobs: branches trained side by side (one thread each).
    """

    preset: str
    overrides: tuple[str, ...]
    steps: int
    eval_every_steps: int
    checkpoint_every_steps: int
    plateau_windows: int
    ladder_steps: int
    min_ladder_steps: int
    end_span_steps: int
    end_every_steps: int
    gaps: tuple[int, ...]
    ladder_divisors: tuple[int, ...] = (2, 4, 8, 16, 32, 64)
    ema_decays: tuple[float, ...] = (0.99, 0.998)
    probe_checkpoints: int = 6
    probe_points: int = 14
    matrix_checkpoints: int = 12
    matrix_used_batches: int = 3
    heldout_batches: int = 3
    jobs: int = 2

    @property
    def end_times(self) -> list[int]:
        """The two-point end times: every ``end_every_steps`` over the last ``end_span_steps``."""
        first = self.steps - self.end_span_steps
        return list(range(first, self.steps + 1, self.end_every_steps))

    def snapshot_schedule(self) -> str:
        """``record.snapshots`` as TOML: every ``end_every_steps``, plus t - k for the short gaps."""
        short = sorted(
            {t - k for t in self.end_times for k in self.gaps if k % self.end_every_steps and t - k >= 0}
        )
        return f"{{every_steps = {self.end_every_steps}, at_steps = {json.dumps(short)}}}"


_TINY_DATA = "data.synthetic={n = 512, n_test = 256, num_classes = 4, channels = 1, size = 8, seed = 3}"
PLATEAU_BUDGETS = {
    # seconds on synthetic data (tests)
    "tiny": PlateauBudget(
        preset="fashion-mlp",
        overrides=(
            "data.name=synthetic",
            _TINY_DATA,
            "model.width=8",
            "train.batch_size=32",
            "optim.lr=0.02",
            "train.log_every_steps=5",
        ),
        steps=240,
        eval_every_steps=10,
        checkpoint_every_steps=20,
        plateau_windows=6,
        ladder_steps=120,
        min_ladder_steps=80,
        end_span_steps=40,
        end_every_steps=20,
        gaps=(1, 2, 5, 20, 40, 80, 160),
        ladder_divisors=(2, 4),
        ema_decays=(0.9, 0.98),
        probe_checkpoints=2,
        probe_points=8,
        matrix_checkpoints=6,
        matrix_used_batches=2,
        heldout_batches=2,
        jobs=1,
    ),
    # 24k steps at lr 0.1 (51 epochs of 60k images): the test loss plateaus from step 8000 (the train
    # loss keeps creeping down, 0.317 -> 0.308 over the last 12k steps); the ladder runs the last 8000
    # steps. About 3 ms a step on one idle core: 75 s for the base run, 3 x 30 s for the six ladder
    # runs, two at a time.
    "default": PlateauBudget(
        preset="fashion-mlp",
        overrides=(),
        steps=24_000,
        eval_every_steps=100,
        checkpoint_every_steps=1000,
        plateau_windows=12,
        ladder_steps=8000,
        min_ladder_steps=6000,
        end_span_steps=5000,
        end_every_steps=500,
        gaps=(1, 2, 3, 5, 8, 13, 20, 35, 50, 100, 200, 300, 500, 1000, 2000, 4000, 8000, 12000, 16000),
    ),
}


def base_spec(b: PlateauBudget, data_dir: str | None = None) -> RunSpec:
    """The recorded constant-lr base run."""
    extra = (f"data.data_dir={json.dumps(str(data_dir))}",) if data_dir else ()
    return RunSpec(
        "base",
        b.preset,
        (
            *b.overrides,
            *extra,
            f"train.steps={b.steps}",
            f"train.eval_every_steps={b.eval_every_steps}",
            "train.tensorboard=false",
            "train.num_threads=1",
            "record.enabled=true",
            f"record.snapshots={b.snapshot_schedule()}",
            f"record.checkpoint_every_steps={b.checkpoint_every_steps}",
            f"record.keep_checkpoints={b.steps // b.checkpoint_every_steps + 1}",
            f"averaging.ema_decays={json.dumps(list(b.ema_decays))}",
        ),
    )


def ladder_specs(b: PlateauBudget, base: RunSpec, branch_step: int) -> dict[int, RunSpec]:
    """``{divisor: branch}``: the base run continued at lr/divisor from ``branch_step`` (same batches)."""
    lr = base.config().optim.lr
    quiet = ("averaging.ema_decays=[]", "record.enabled=false")
    return {
        d: RunSpec(
            f"lr_div{d}",
            base.preset,
            (*base.overrides, *quiet, f"optim.lr={lr / d:.6g}"),
            (base, branch_step),
        )
        for d in b.ladder_divisors
    }


@dataclass
class PlateauDemoResult:
    """What the plateau demo did: where its files are, the printout, and the time each stage took."""

    out_dir: Path
    run_dir: Path | None = None
    report: Path | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)

    def summary_text(self) -> str:
        """The table printed by ``trajlab demo``."""
        from trajlab.experiments.plateau_verdicts import summary_rows

        rows = summary_rows(self.summary)
        if self.timings_s:
            parts = ", ".join(f"{k} {v:.0f} s" for k, v in self.timings_s.items())
            rows.append(("time", f"{parts}; total {sum(self.timings_s.values()):.0f} s"))
        if self.report is not None:
            rows.append(("report", str(self.report.resolve())))
        width = max((len(k) for k, _ in rows), default=0)
        return "\n".join(["trajlab demo (plateau)", *(f"  {k:<{width}}  {v}" for k, v in rows)])


def choose_branch_step(plateau_start: int | None, b: PlateauBudget) -> int:
    """Where the ladder branches: on the plateau, ``ladder_steps`` before the end when the plateau starts
    earlier (a fixed cost), else at the first checkpoint at or after its start, no later than
    T - ``min_ladder_steps`` (without a plateau: there)."""
    every = b.checkpoint_every_steps
    cap = (b.steps - b.min_ladder_steps) // every * every
    if plateau_start is None:
        return max(every, cap)
    first = int(math.ceil(plateau_start / every) * every)
    return max(every, min(max(first, b.steps - b.ladder_steps), cap))


def run_plateau_demo(
    out: str | Path,
    *,
    data_dir: str | None = None,
    budget: str = "default",
    fresh: bool = False,
    host: HostSettings | None = None,
    progress: bool = True,
) -> PlateauDemoResult:
    """Train (or reuse) the base run and its lr ladder, measure, fit, and write the report.

    Args:
        out: output directory (runs in ``OUT/runs/``, ``OUT/summary.json``, ``OUT/report.html``).
        data_dir: where Fashion-MNIST lives (default: the usual places).
        budget: ``"default"`` (minutes on 2 CPU cores) or ``"tiny"`` (seconds, synthetic data).
        fresh: delete ``out`` first.
        host: the machine's settings (data directories, threads, the CPU kernel).
        progress: progress bars.

    Returns:
        A :class:`PlateauDemoResult` (``summary_text()`` is what the CLI prints).
    """
    from trajlab.experiments import plateau_summary, plateau_verdicts
    from trajlab.reports import html as report

    if budget not in PLATEAU_BUDGETS:
        raise ConfigError(f"unknown demo budget {budget!r}; choose one of {', '.join(PLATEAU_BUDGETS)}")
    wall0 = time.perf_counter()
    b = PLATEAU_BUDGETS[budget]
    out = Path(out)
    if fresh and out.exists():
        shutil.rmtree(out)
    host = host or HostSettings()
    host.apply_threads(1)  # a 100-unit MLP: one thread per run is fastest; branches run side by side
    result = PlateauDemoResult(out_dir=out)
    base = base_spec(b, data_dir)
    t0 = time.perf_counter()
    run_dir = ensure_runs(out, [base], jobs=1, progress=progress, host=host)["base"]
    result.run_dir = run_dir
    result.timings_s["base run"] = time.perf_counter() - t0
    plateau = _plateau(run_dir, b)
    branch_step = choose_branch_step(plateau["start_step"] if plateau["found"] else None, b)
    ladder = ladder_specs(b, base, branch_step)
    t0 = time.perf_counter()
    jobs = min(b.jobs, os.cpu_count() or 1, len(ladder))
    dirs = ensure_runs(out, list(ladder.values()), jobs=jobs, progress=progress, host=host)
    result.timings_s["ladder"] = time.perf_counter() - t0
    ladder_dirs = {d: dirs[spec.name] for d, spec in ladder.items()}

    cfg = base.config()
    analysis = Analysis(cfg, run_dir, _demo_budget(b), progress=progress, host=host)
    t0 = time.perf_counter()
    analysis.line_probes()
    analysis.loss_matrix()
    result.timings_s["probes"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    doc = plateau_summary.measure(analysis.run, b, plateau, branch_step, ladder_dirs, progress=progress)
    result.timings_s["measure"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    doc["theory"] = plateau_summary.fit(doc)
    doc["table"] = plateau_verdicts.claims_table(doc)
    result.timings_s["theory"] = time.perf_counter() - t0
    doc["provenance"] = provenance(seed=cfg.train.seed, device="cpu")
    doc["runs"] = {"base": str(run_dir), **{f"lr/{d}": str(p) for d, p in ladder_dirs.items()}}
    doc["budget"] = budget
    write_json_atomic(run_dir / report.ANALYSIS_DIR / PLATEAU_RESULT, plateau_verdicts.finite(doc))
    t0 = time.perf_counter()
    result.report = report.build_report([run_dir], out / "report.html", title="trajlab demo: the plateau")
    result.timings_s["report"] = time.perf_counter() - t0
    result.summary = plateau_verdicts.summary_json(doc, wall_seconds=time.perf_counter() - wall0)
    write_json_atomic(out / "summary.json", plateau_verdicts.finite(result.summary))
    return result


def _plateau(run_dir: Path, b: PlateauBudget) -> dict[str, Any]:
    """The project's plateau test (as the claims' shared window): the train loss, or failing that the
    held-out (test) loss, the one the averaging claims are about; both results are kept."""
    from trajlab.experiments.claims import common

    rows = common.metric_rows(run_dir, "train")
    steps, losses = [r["step"] for r in rows], [r["train_loss"] for r in rows]
    train = detect_plateau(steps, losses, windows=b.plateau_windows)
    test = common.eval_series(run_dir, "test_loss")
    at = sorted(test)
    held = detect_plateau(at, [test[s] for s in at], windows=min(b.plateau_windows, len(at) // 2))
    chosen, series = (train, "train loss") if train.found or not held.found else (held, "test loss")
    return {
        **chosen.to_dict(),
        "series": series,
        "rule": "detect_plateau on the train loss; failing that on the test loss (claims' shared window)",
        "train_loss_plateau": train.to_dict(),
        "test_loss_plateau": held.to_dict(),
    }


def _demo_budget(b: PlateauBudget) -> DemoBudget:
    return DemoBudget(
        preset=b.preset,
        overrides=b.overrides,
        probe_checkpoints=b.probe_checkpoints,
        probe_points=b.probe_points,
        matrix_checkpoints=b.matrix_checkpoints,
        matrix_used_batches=b.matrix_used_batches,
        heldout_batches=b.heldout_batches,
        bn_batches=1,
    )
