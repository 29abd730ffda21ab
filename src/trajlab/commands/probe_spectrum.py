"""``trajlab probe --spectrum``: the Hessian spectrum of each probed batch (or of the training loss over
``--spectrum-images`` training images), beside its line probe."""

from __future__ import annotations

import argparse
import math
from typing import Any

from trajlab.commands.io import UsageError


def training_images(run: Any, count: int | None) -> list[Any] | None:
    """The first ``count`` training images (None: all of them) in order and unaugmented, as the run's
    evaluation batches (the last one cut to size); None for ``count == 0`` (the probed batch's Hessian)."""
    if count == 0:
        return None
    if run.kind == "loop":
        raise UsageError(
            "--spectrum-images: a run recorded from your own loop has no in-order training set here; "
            "leave it out (the probed batch's Hessian)"
        )
    batches, seen = [], 0
    for x, y in run.train_batches_in_order():
        take = len(y) if count is None else min(len(y), count - seen)
        batches.append((x[:take], y[:take]))
        seen += take
        if count is not None and seen >= count:
            return batches
    if count is not None or not batches:
        raise UsageError(f"--spectrum-images {count}: the training set has {seen} images; give at most that")
    return batches


def spectra(
    plan: Any, args: argparse.Namespace, lines: list[dict[str, Any]], bar: Any
) -> list[dict[str, Any]]:
    """Top eigenvalues and trace of the probed batch's Hessian (or of the training loss over
    ``plan.spectrum_data``) per (checkpoint, BN mode), set beside the line probe of the same checkpoint
    when there is one (``lines``); ``plan`` is the probe command's plan."""
    from trajlab.probes import hessian_trace, top_eigenvalues

    run = plan.run
    line_of = {(r["step"], r["bn"]): r for r in lines}
    records = []
    for step in plan.steps:
        model = run.load_weights(step)
        batch_step = plan.batch_of[step]
        # One mini-batch keeps its gradient's graph between HVPs; data= re-runs each batch per HVP.
        data = (
            {"batch": run.batch(batch_step)} if plan.spectrum_data is None else {"data": plan.spectrum_data}
        )
        lr, mu = run.lr_at(batch_step), run.momentum
        for bn in plan.modes:
            eig = top_eigenvalues(
                model, run.loss_fn, **data, k=args.top_k, tol=args.eig_tol, max_iter=max(100, 4 * args.top_k),
                bn=bn, seed=args.seed,
            )  # fmt: skip
            tr = hessian_trace(
                model, run.loss_fn, **data, max_samples=args.trace_samples, bn=bn, seed=args.seed
            )
            record = spectrum_record(step, batch_step, lr, mu, bn, eig, tr, line_of.get((step, bn)))
            record["hessian_of"] = "probed batch" if plan.spectrum_data is None else "training images"
            records.append(record)
            bar.update(1)
    return records


def spectrum_record(
    step: int, batch_step: int, lr: float, mu: float, bn: str, eig: Any, tr: Any, line: dict | None
) -> dict[str, Any]:
    """JSON-ready; the paper's comparisons in closed form:

    * heavy ball with momentum mu is stable on a quadratic of curvature lambda iff lr * lambda < 2(1 + mu),
      so ``lr_lambda_max_over_limit`` = lr lambda_max / (2 (1 + mu)) >= 1 means the run sits at or past
      the edge of stability of its own batch;
    * the line probe's direction d has Rayleigh quotient d^T H d / |d|^2 <= lambda_max of the probed
      batch's Hessian, so ``curvature_along_direction_over_lambda_max`` (<= 1 there) says how much flatter
      the update direction is than the top eigendirection; against the training loss's Hessian
      (``--spectrum-images``) it compares the batch's curvature with the full loss's sharpest one and
      can exceed 1; ``lr_star_times_lambda_max`` sets the fitted best step beside the quadratic stability
      limit 2 / lambda_max of plain gradient descent (< 2: inside it);
    * ``trace_over_lambda_max`` = tr(H) / lambda_max, the number of directions as sharp as the sharpest
      that would carry the same total curvature (an effective rank; 1 when one direction dominates).
    """
    lam = eig.eigenvalues[0]
    record: dict[str, Any] = {
        "step": step,
        "batch_step": batch_step,
        "bn": bn,
        "lr": lr,
        "momentum": mu,
        "eigenvalues": list(eig.eigenvalues),
        "residuals": list(eig.residuals),
        "converged": list(eig.converged),
        "eig_hvps": eig.hvps,
        "eig_tol": eig.tol,
        "trace": tr.trace,
        "trace_std_error": tr.std_error,
        "trace_samples": tr.samples,
        "trace_converged": tr.converged,
        "trace_hvps": tr.hvps,
        "seed": eig.seed,
        "n_params": eig.n_params,
        "n_examples": eig.n_examples,
        "lambda_max": lam,
        "two_over_lambda_max": 2.0 / lam if lam > 0 else math.nan,
        "lr_lambda_max_over_limit": lr * lam / (2.0 * (1.0 + mu)) if lam > 0 else math.nan,
        "trace_over_lambda_max": tr.trace / lam if lam > 0 else math.nan,
        "wall_time_s": eig.wall_time_s + tr.wall_time_s,
        "cost": (eig.cost + tr.cost).to_dict(),
    }
    if line is not None:
        lr_star, h = line.get("lr_star", math.nan), line.get("curvature_hvp", math.nan)
        record["lr_star"] = lr_star
        record["lr_star_times_lambda_max"] = lr_star * lam if lam > 0 else math.nan
        record["curvature_along_direction"] = h
        record["curvature_along_direction_over_lambda_max"] = h / lam if lam > 0 else math.nan
    return record


def summary_line(r: dict[str, Any]) -> str:
    """One printed line per (checkpoint, BN mode)."""
    eigs = ", ".join(f"{v:.4g} (res {e:.1e})" for v, e in zip(r["eigenvalues"], r["residuals"]))
    of = (
        ""
        if r.get("hessian_of", "probed batch") == "probed batch"
        else f" ({r['n_examples']} training images)"
    )
    line = (
        f"step {r['step']} bn={r['bn']}{of}: top eigenvalues {eigs}; trace {r['trace']:.4g} "
        f"± {r['trace_std_error']:.2g} ({r['eig_hvps'] + r['trace_hvps']} HVPs); "
        f"lr·λmax/(2(1+mu)) {r['lr_lambda_max_over_limit']:.3g}"
    )
    if "lr_star_times_lambda_max" in r:
        line += (
            f", lr*·λmax {r['lr_star_times_lambda_max']:.3g} (2 = the stability limit), curvature "
            f"along the update / λmax {r['curvature_along_direction_over_lambda_max']:.3g}"
        )
    return line
