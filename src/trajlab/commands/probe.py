"""``trajlab probe RUN_DIR``: the paper's fixed mini-batch measurements on a recorded run.

* ``--line`` (the default): at each probed checkpoint theta_s, the line profile f(lr) = L_B(theta_s - lr d)
  of a training batch B along its own update direction d = g_B (+ lambda theta_s with
  ``--weight-decay-in-grad``), with ``--batches N`` held-out test batches along the same line as the
  control; the quadratic fit's R^2 on [0, 2 lr*], the one-step fraction f(lr*)/f(0), lr*/lr and
  lr*/(lr/(1-momentum)). B is B_(s+1), the batch of the step actually taken from theta_s
  (``--batch next``, default), or B_s, the batch just used (``--batch used``, as the online probe does).
* ``--matrix``: the loss of those training batches and the held-out ones at every stored checkpoint (capped),
  and the memory curve of a used batch against the held-out mean.
* ``--alignment``: cosines of mini-batch gradients to the exact full-training-set gradient, B_simple, B_noise.

Writes ``OUT/probe.json`` (results, distributions, cost, run config, provenance) and PNG plots; the BN
mode (batch or running statistics) is recorded with every result.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trajlab.commands import probe_spectrum
from trajlab.commands.io import (
    UsageError,
    add_run_flags,
    check_at_least,
    command_line,
    emit,
    host_of,
    open_run,
)
from trajlab.config import ConfigError

log = logging.getLogger(__name__)

RESULT_FILE = "probe.json"
SUMMARY_KEYS = (
    "r2",
    "one_step_fraction",
    "lr_star_over_lr",
    "lr_star_over_effective_lr",
    "heldout_fraction_at_lr_star",
    "curvature_fit_over_hvp",
)


def register(sub: Any) -> None:
    """Add ``probe`` to ``trajlab``'s subparsers."""
    p = sub.add_parser(
        "probe",
        help="fixed mini-batch line profiles, loss matrix and gradient alignment of a recorded run",
        description="Measure a recorded run's fixed mini-batch losses (arXiv 2301.02312, sec. 2): line "
        "profiles along each batch's gradient with a quadratic fit and held-out control (--line, the "
        "default), a batches x checkpoints loss matrix with the memory of used batches (--matrix), and "
        "gradient alignment with the full-data gradient (--alignment). Example: trajlab probe runs/fashion "
        "--line --matrix --steps 0,1000,5000 --batches 4 --bn both --out runs/fashion/probes",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run recorded with record.enabled=true")
    p.add_argument("--line", action="store_true", help="line profiles (implied when nothing else is asked)")
    p.add_argument("--matrix", action="store_true", help="also the loss matrix and batch memory curves")
    p.add_argument("--alignment", action="store_true", help="also gradient alignment and noise scales")
    p.add_argument(
        "--spectrum",
        action="store_true",
        help="also the Hessian spectrum of the probed batch: top eigenvalues (Lanczos, with residuals) and "
        "the trace (Hutchinson, with its standard error), beside lr* and the stability limit",
    )
    p.add_argument("--top-k", type=int, default=3, help="--spectrum: eigenvalues wanted (default 3)")
    p.add_argument(
        "--eig-tol", type=float, default=1e-3, help="--spectrum: relative residual tolerance (default 1e-3)"
    )
    p.add_argument(
        "--trace-samples",
        type=int,
        default=100,
        help="--spectrum: at most this many Hutchinson vectors, stopping at 1%% standard error (default 100)",
    )
    p.add_argument("--seed", type=int, default=0, help="--spectrum: seed of the random vectors (default 0)")
    p.add_argument(
        "--spectrum-images",
        type=_images,
        default=0,
        metavar="N|all",
        help="--spectrum: the Hessian of the training loss over the first N training images (in order, "
        "unaugmented, in batches of train.eval_batch_size) instead of the probed batch's (default 0: the "
        "probed batch)",
    )
    p.add_argument(
        "--steps",
        type=_int_list,
        help="comma-separated checkpoint steps (default: all stored, evenly capped to --max-steps)",
    )
    p.add_argument("--max-steps", type=int, default=8, help="cap of the default step list (default 8)")
    p.add_argument(
        "--batch",
        choices=["next", "used"],
        default="next",
        help="probe B_(s+1), the batch of the step taken from theta_s (default), or B_s, the batch just used",
    )
    p.add_argument(
        "--batches", type=int, default=2, metavar="N", help="held-out test batches as controls (default 2)"
    )
    p.add_argument(
        "--bn",
        choices=["batch", "running", "both"],
        default="both",
        help="BatchNorm statistics (default both)",
    )
    p.add_argument(
        "--weight-decay-in-grad",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add optim.weight_decay * theta to the direction (default: yes for sgd, whose update has it)",
    )
    p.add_argument("--points", type=int, default=32, help="lr grid budget of each profile (default 32)")
    p.add_argument(
        "--hvp", action=argparse.BooleanOptionalAction, default=True, help="HVP curvature (default: on)"
    )
    p.add_argument("--matrix-steps", type=int, default=32, help="cap of the loss matrix's checkpoints")
    p.add_argument(
        "--alignment-batches", type=int, default=4, help="consecutive training batches per alignment (>= 2)"
    )
    p.add_argument("--hessian-batches", type=int, default=4, help="full-data batches used for B_noise's H")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda:1, ...")
    p.add_argument("--out", metavar="DIR", help="output directory (default: RUN_DIR/probes)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT/probe.json")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_run_flags(p)
    p.set_defaults(func=cmd_probe)


def _images(text: str) -> int | None:
    """``--spectrum-images``: a count, or ``all`` (None) for the whole training set."""
    if text == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of images or 'all', got {text!r}") from None


def _int_list(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated steps, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one step")
    return values


# ------------------------------------------------------------------------------------------ handler


@dataclass(frozen=True)
class ProbePlan:
    """Everything ``trajlab probe`` checked before probing: the run, what to probe, where to write.

    Attributes:
        run: the run (config, data, model, snapshots, batches).
        steps: the checkpoints to probe.
        batch_of: for each checkpoint, the step whose batch is profiled (B_(s+1) or B_s).
        modes: the BatchNorm modes.
        line: whether line profiles are asked (the default when nothing else is).
        heldout: the held-out control batches.
        weight_decay: the coupled weight decay added to the direction.
        out: the output directory.
        spectrum_data: the training batches whose loss ``--spectrum`` takes the Hessian of (None: the
            probed batch's).
    """

    run: Any
    steps: list[int]
    batch_of: dict[int, int]
    modes: list[str]
    line: bool
    heldout: list[Any]
    weight_decay: float
    out: Path
    spectrum_data: list[Any] | None = None


def cmd_probe(args: argparse.Namespace) -> int:
    """Handler of ``trajlab probe``: check everything, then probe step by step, then write and summarise."""
    plan = _prepare(args)
    from tqdm import tqdm

    per_step = int(plan.line) + int(args.alignment) + int(args.spectrum)
    units = len(plan.modes) * (len(plan.steps) * per_step + int(args.matrix))
    result: dict[str, Any] = {"line": [], "matrix": {}, "alignment": [], "spectrum": []}
    with tqdm(total=units, desc="probe", disable=args.quiet, unit="probe") as bar:
        if plan.line:
            result["line"] = _line_profiles(plan, args, bar)
        if args.matrix:
            result["matrix"] = _matrices(plan, args, bar)
        if args.alignment:
            result["alignment"] = _alignments(plan, args, bar)
        if args.spectrum:
            result["spectrum"] = probe_spectrum.spectra(plan, args, result["line"], bar)
    from trajlab import files

    doc = _document(args, plan, result)
    root = _run_root(plan)
    plots = _plots(plan.out, result, root)
    if root is not None:  # inside the run: never through a symlink, and listed in its checksums
        files.write_run_json(root, str(Path(os.path.abspath(plan.out / RESULT_FILE)).relative_to(root)), doc)
    else:
        files.write_json_atomic(plan.out / RESULT_FILE, doc)
    for line in _summary_lines(doc):
        emit(line)
    emit(f"wrote {plan.out / RESULT_FILE} and {len(plots)} plot(s) in {plan.out}")
    return 0


def _prepare(args: argparse.Namespace) -> ProbePlan:
    """All checks and the shared objects (the run, steps, held-out batches), before any probing."""
    check_at_least(
        [
            ("--batches", args.batches, 0),
            ("--max-steps", args.max_steps, 1),
            ("--points", args.points, 3),
            ("--matrix-steps", args.matrix_steps, 1),
            ("--alignment-batches", args.alignment_batches, 2),
            ("--hessian-batches", args.hessian_batches, 1),
            ("--top-k", args.top_k, 1),
            ("--trace-samples", args.trace_samples, 10),
        ]
    )
    if args.spectrum_images is not None and args.spectrum_images < 0:
        raise UsageError(f"--spectrum-images must be >= 0 or 'all', got {args.spectrum_images}")
    if args.spectrum_images != 0 and not args.spectrum:
        raise UsageError("--spectrum-images sets the data of --spectrum: add --spectrum")
    if not (0.0 < args.eig_tol < 1.0):
        raise UsageError(f"--eig-tol {args.eig_tol}: give a relative tolerance in (0, 1), e.g. 1e-3")
    if args.matrix and args.batches < 1:
        raise UsageError("--matrix compares used batches with held-out ones: give --batches N >= 1")
    out = Path(args.out) if args.out else Path(args.run_dir) / "probes"
    if (out / RESULT_FILE).exists() and not args.overwrite:
        raise UsageError(f"{out / RESULT_FILE} exists; choose another --out or pass --overwrite")
    host = host_of(args)
    run = open_run(args, device=args.device)
    host.apply_threads(run.num_threads)  # the run's own thread budget (shared machines)
    run.check_batch_log()  # a lost or damaged batch log is damage, not "no batch to probe"
    steps, batch_of = _select_steps(args, run)
    run.model  # noqa: B018 (builds the model and checks the snapshots fit it, before any probing)
    return ProbePlan(
        run=run,
        steps=steps,
        batch_of=batch_of,
        modes=["batch", "running"] if args.bn == "both" else [args.bn],
        line=args.line or not (args.matrix or args.alignment or args.spectrum),
        heldout=_heldout_batches(run, args.batches),
        weight_decay=_weight_decay(args, run),
        out=out,
        spectrum_data=probe_spectrum.training_images(run, args.spectrum_images) if args.spectrum else None,
    )


def _select_steps(args: argparse.Namespace, run: Any) -> tuple[list[int], dict[int, int]]:
    """The checkpoints to probe and, for each, the step whose batch is profiled."""
    import numpy as np

    stored, logged = run.snapshot_steps, set(run.batch_steps)
    offset = 1 if args.batch == "next" else 0
    batch_of = {s: s + offset for s in stored if s + offset in logged and s + offset >= 1}
    if args.steps is None:
        eligible = sorted(batch_of)
        if not eligible:
            raise UsageError(
                f"{args.run_dir}: no stored snapshot has a logged batch to probe (--batch {args.batch})"
            )
        picks = np.unique(np.round(np.linspace(0, len(eligible) - 1, min(args.max_steps, len(eligible)))))
        return [eligible[int(i)] for i in picks], batch_of
    for s in args.steps:
        if s not in set(stored):
            raise UsageError(
                f"--steps {s}: no snapshot of that step; stored: {len(stored)} snapshots, "
                f"steps {stored[0] if stored else '-'}..{stored[-1] if stored else '-'}"
            )
        if s not in batch_of:
            other = "used" if args.batch == "next" else "next"
            raise UsageError(
                f"--steps {s}: the batch log has no B_{s + offset} to probe with --batch {args.batch}; "
                f"use --batch {other} or another step"
            )
    return list(args.steps), batch_of


def _heldout_batches(run: Any, n: int) -> list[Any]:
    """The run's first ``n`` held-out control batches (:meth:`trajlab.runs.RecordedRun.heldout_batches`)."""
    try:
        return run.heldout_batches(n)
    except ConfigError as e:
        raise UsageError(f"--batches {n}: {e}; lower --batches") from None


def _weight_decay(args: argparse.Namespace, run: Any) -> float:
    if args.weight_decay_in_grad is None:
        return run.update_weight_decay  # adamw's decay is decoupled: not in its direction
    decay = (
        run.config.optim.weight_decay if run.config is not None else run.recipe.optimizer.get("weight_decay")
    )
    return float(decay or 0.0) if args.weight_decay_in_grad else 0.0


# ------------------------------------------------------------------------------------------ probes


def _line_profiles(plan: ProbePlan, args: argparse.Namespace, bar: Any) -> list[dict[str, Any]]:
    """One line profile per (checkpoint, BN mode), as JSON-ready records."""
    from trajlab.probes import line_profile

    run = plan.run
    controls = {f"heldout_{i}": b for i, b in enumerate(plan.heldout)}
    records = []
    for step in plan.steps:
        model = run.load_weights(step)
        batch_step = plan.batch_of[step]
        batch = run.batch(batch_step)
        lr = run.lr_at(batch_step)
        for bn in plan.modes:
            profile = line_profile(
                model,
                run.loss_fn,
                batch,
                eval_batches=controls,
                bn=bn,
                weight_decay=plan.weight_decay,
                num_points=args.points,
                hvp=args.hvp,
            )
            records.append(_line_record(step, batch_step, lr, run.momentum, profile.to_dict()))
            bar.update(1)
    return records


def _line_record(step: int, batch_step: int, lr: float, momentum: float, profile: dict) -> dict[str, Any]:
    effective = lr / (1.0 - momentum)
    heldout = [v for v in profile["control_at_lr_star"].values() if math.isfinite(v)]
    hvp, fit = profile["curvature_hvp"], profile["curvature_fit"]
    return {
        "step": step,
        "batch_step": batch_step,
        "lr": lr,
        "momentum": momentum,
        "effective_lr": effective,
        "lr_star_over_lr": profile["lr_star"] / lr if lr > 0 else math.nan,
        "lr_star_over_effective_lr": profile["lr_star"] / effective if effective > 0 else math.nan,
        "heldout_fraction_at_lr_star": sum(heldout) / len(heldout) if heldout else math.nan,
        "r2": profile["fit"]["r2"],
        "curvature_fit_over_hvp": fit / hvp if math.isfinite(hvp) and hvp != 0 else math.nan,
        **profile,
    }


def _matrices(plan: ProbePlan, args: argparse.Namespace, bar: Any) -> dict[str, Any]:
    """Loss matrix (used batches of the probed steps + held-out batches, x checkpoints) and memory curves."""
    import numpy as np

    from trajlab.probes import batch_memory, loss_matrix

    stored = plan.run.snapshot_steps
    cap = args.matrix_steps
    cols = [
        stored[int(i)] for i in np.unique(np.round(np.linspace(0, len(stored) - 1, min(cap, len(stored)))))
    ]
    rows: dict[str, Any] = {f"step_{plan.batch_of[s]}": plan.batch_of[s] for s in plan.steps}
    rows.update({f"heldout_{i}": b for i, b in enumerate(plan.heldout)})
    out = {}
    for bn in plan.modes:
        run = plan.run
        matrix = loss_matrix(run, rows, cols, run.new_model, loss_fn=run.loss_fn, bn=bn, device=run.device)
        out[bn] = {"matrix": matrix.to_dict(), "memory": batch_memory(matrix).to_dict()}
        bar.update(1)
    return out


def _alignments(plan: ProbePlan, args: argparse.Namespace, bar: Any) -> list[dict[str, Any]]:
    """Gradient alignment at each probed checkpoint with the next ``--alignment-batches`` logged batches."""
    from trajlab.probes import gradient_alignment

    run = plan.run
    logged = set(run.batch_steps)
    records = []
    for step in plan.steps:
        first = plan.batch_of[step]
        batch_steps = [u for u in range(first, first + args.alignment_batches) if u in logged]
        if len(batch_steps) < 2:
            log.warning("alignment at step %d skipped: fewer than 2 logged batches from B_%d", step, first)
            bar.update(len(plan.modes))
            continue
        model = run.load_weights(step)
        batches = [run.batch(u) for u in batch_steps]
        for bn in plan.modes:
            result = gradient_alignment(
                model,
                run.loss_fn,
                batches,
                run.train_batches_in_order(),
                bn=bn,
                hessian_batches=args.hessian_batches,
            )
            records.append({"step": step, "batch_steps": batch_steps, **result.to_dict()})
            bar.update(1)
    return records


# ------------------------------------------------------------------------------------------ output


def distribution(values: list[float]) -> dict[str, float]:
    """n, mean, std, min, quartiles and max of the finite ``values`` (nan fields when there are none)."""
    import numpy as np

    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"n": 0, **{k: math.nan for k in ("mean", "std", "min", "q25", "median", "q75", "max")}}
    q = np.quantile(v, [0.0, 0.25, 0.5, 0.75, 1.0])
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "std": float(v.std()),
        "min": float(q[0]),
        "q25": float(q[1]),
        "median": float(q[2]),
        "q75": float(q[3]),
        "max": float(q[4]),
    }


def _summary(records: list[dict[str, Any]], modes: list[str]) -> dict[str, Any]:
    out = {}
    for bn in modes:
        rs = [r for r in records if r["bn"] == bn]
        out[bn] = {key: distribution([r[key] for r in rs]) for key in SUMMARY_KEYS}
        out[bn]["unbracketed"] = sum(not r["bracketed"] for r in rs)
    return out


def _document(args: argparse.Namespace, plan: ProbePlan, result: dict[str, Any]) -> dict[str, Any]:
    from trajlab.probes import CostLedger
    from trajlab.provenance import provenance

    run = plan.run
    costs = [CostLedger(**r["cost"]) for r in result["line"] + result["alignment"] + result["spectrum"]]
    costs += [CostLedger(**m["matrix"]["cost"]) for m in result["matrix"].values()]
    return {
        "kind": "trajlab.probe",
        "run_dir": str(args.run_dir),
        "steps": plan.steps,
        "batch": args.batch,
        "batch_steps": [plan.batch_of[s] for s in plan.steps],
        "bn_modes": plan.modes,
        "weight_decay_in_direction": plan.weight_decay,
        "heldout": {
            "source": "test set, the run's held-out batches (seeded sampler, training augmentation)",
            "batches": len(plan.heldout),
        },
        "summary": _summary(result["line"], plan.modes) if result["line"] else {},
        "line": result["line"],
        "matrix": result["matrix"],
        "alignment": result["alignment"],
        "spectrum": result["spectrum"],
        "cost_total": sum(costs, CostLedger()).to_dict(),
        "run_config": run.description(),
        "verified": run.verify,
        "provenance": provenance(seed=run.seed, device=plan.run.device, command=command_line(args)),
    }


def _run_root(plan: ProbePlan) -> Path | None:
    """The run directory when the output goes inside it (writes are then confined to it), else None."""
    # Lexically (no symlink resolution): a link planted in the run must be refused, not followed out.
    root, out = Path(os.path.abspath(plan.run.run_dir)), Path(os.path.abspath(plan.out))
    try:
        out.relative_to(root)
    except ValueError:
        return None
    return root


def _plots(out: Path, result: dict[str, Any], root: Path | None) -> list[Path]:
    import matplotlib.pyplot as plt

    from trajlab import files
    from trajlab.reports.probe_plots import (
        plot_batch_memory,
        plot_line_profile,
        plot_loss_matrix,
        plot_lr_star_over_training,
    )

    out = files.make_dirs(Path(os.path.abspath(out)), root)
    figures = [
        (f"line_step{r['step']}_bn-{r['bn']}.png", lambda r=r: plot_line_profile(r)) for r in result["line"]
    ]
    if result["line"]:
        figures.append(("lr_star.png", lambda: plot_lr_star_over_training(result["line"])))
    for bn, m in result["matrix"].items():
        figures.append((f"loss_matrix_bn-{bn}.png", lambda m=m: plot_loss_matrix(m["matrix"])))
        figures.append((f"batch_memory_bn-{bn}.png", lambda m=m: plot_batch_memory(m["memory"])))
    paths = []
    for name, make in figures:
        fig = make()
        files.save_figure_atomic(fig, out / name, dpi=110, root=root)
        plt.close(fig)
        paths.append(out / name)
    return paths


def _summary_lines(doc: dict[str, Any]) -> list[str]:
    lines = []
    for bn, s in doc["summary"].items():
        med = {k: s[k]["median"] for k in SUMMARY_KEYS}
        lines.append(
            f"bn={bn}: {s['r2']['n']} profiles; median R^2 {med['r2']:.4f} "
            f"(q25 {s['r2']['q25']:.4f}), one-step fraction {med['one_step_fraction']:.4f}, "
            f"lr*/lr {med['lr_star_over_lr']:.3g}, lr*/(lr/(1-mu)) {med['lr_star_over_effective_lr']:.3g}, "
            f"held-out f(lr*)/f(0) {med['heldout_fraction_at_lr_star']:.4f}, unbracketed {s['unbracketed']}"
        )
    for bn, m in doc["matrix"].items():
        mem = m["memory"]
        after = [a for k, a in zip(mem["steps_since"], mem["advantage"]) if k >= 0]
        if after:
            lines.append(f"bn={bn}: used-batch advantage over held-out right after use {after[0]:.4f}")
    lines += [probe_spectrum.summary_line(r) for r in doc.get("spectrum", [])]
    for r in doc["alignment"]:
        cos = sum(r["cosine"]) / len(r["cosine"])
        lines.append(
            f"step {r['step']} bn={r['bn']}: mean cos(g_B, G) {cos:.4f}, B_simple {r['b_simple']:.3g}, "
            f"B_noise {r['b_noise']:.3g}"
        )
    return lines
