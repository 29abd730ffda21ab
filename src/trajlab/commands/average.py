"""``trajlab average RUN_DIR``: iterate averages built post hoc from a recorded run, evaluated on test data.

Every requested average (EMA, SWA, two-point) at every requested step is built from the stored snapshots
in one streaming pass (:func:`trajlab.averaging.post_hoc_many`: each snapshot is read once), loaded into
the run's model (rebuilt from its ``config.json``) and evaluated on the run's test set. BatchNorm
statistics are recalibrated on training batches by default (``--bn recalibrate``), or taken from the
snapshot at the step read (``--bn running``, as an online average with ``buffers="copy"``). The last
iterate is always shown both ways, since recalibration alone moves accuracy.

Averages are the exact ones an online ``AveragedWeights(rule, every_steps=K)`` would hold, with K the
snapshot spacing by default (horizons stay in steps: an EMA's per-step decay is unchanged). A rule the
snapshots cannot represent exactly (e.g. a two-point gap that is not a multiple of the spacing) is refused
with the averaging module's explanation, before anything is loaded; nothing is approximated.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from trajlab.commands.io import UsageError, add_run_flags, command_line, emit, host_of, open_run

log = logging.getLogger(__name__)

COLUMNS = ("rule", "at_step", "bn", "test_loss", "test_acc")


def register(sub: Any) -> None:
    """Add ``average`` to ``trajlab``'s subparsers."""
    p = sub.add_parser(
        "average",
        help="evaluate EMA / SWA / two-point averages of a recorded run",
        description="Build iterate averages post hoc from RUN_DIR's stored snapshots (one streaming pass), "
        "evaluate each on the test set next to the last iterate, print a table and optionally write "
        "JSON with provenance. Example: trajlab average runs/fashion --ema 0.999 --ema 0.9999 "
        "--two-point-gap 2000 --swa-start 10000 --out runs/fashion/averages.json",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run recorded with record.enabled=true")
    g = p.add_argument_group("averages (repeatable; any number)")
    g.add_argument(
        "--ema", type=float, action="append", default=[], metavar="DECAY", help="EMA, per-step decay"
    )
    g.add_argument(
        "--two-point-gap",
        type=int,
        action="append",
        default=[],
        metavar="STEPS",
        help="1/2 (theta_t + theta_(t-k))",
    )
    g.add_argument(
        "--swa-start", type=int, action="append", default=[], metavar="STEP", help="uniform average from STEP"
    )
    g.add_argument(
        "--swa-window", type=int, action="append", default=[], metavar="STEPS", help="mean of the last STEPS"
    )
    p.add_argument(
        "--at-step",
        type=int,
        action="append",
        default=[],
        metavar="S",
        help="read the averages at step S (repeatable; default: the last stored step)",
    )
    p.add_argument(
        "--every-steps",
        type=int,
        metavar="K",
        help="update interval of the averages reproduced (default: the snapshots' most common spacing)",
    )
    p.add_argument(
        "--bn",
        choices=["recalibrate", "running"],
        default="recalibrate",
        help="BatchNorm statistics of the averages: recomputed on training batches (default) or the "
        "running statistics of the snapshot at the step read",
    )
    p.add_argument(
        "--bn-batches", type=int, default=50, help="training batches for recalibration (default 50)"
    )
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda:1, ...")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--out", metavar="FILE", help="also write the JSON (with provenance) to FILE")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    add_run_flags(p)
    p.set_defaults(func=cmd_average)


def cmd_average(args: argparse.Namespace) -> int:
    """Handler of ``trajlab average``: plan (all checks), then one streaming pass, then evaluation."""
    if args.bn_batches < 1:
        raise UsageError(f"--bn-batches must be >= 1, got {args.bn_batches}")
    if args.out and Path(args.out).exists() and not args.overwrite:
        raise UsageError(f"--out {args.out} exists; choose another file or pass --overwrite")
    host = host_of(args)
    run = open_run(args, device=args.device, bn_batches=args.bn_batches)
    host.apply_threads(run.num_threads)  # the run's own thread budget (shared machines)
    stored = run.snapshot_steps
    if not stored:
        raise UsageError(f"{args.run_dir} has no stored snapshots; record the run with record.enabled=true")
    at_steps = _at_steps(args.at_step, stored)
    every = args.every_steps if args.every_steps is not None else default_every_steps(stored)
    rules = _rules(args)
    _check_representable(stored, rules, at_steps, every)
    rows = _evaluate_all(run, rules, at_steps, every, recalibrate=args.bn == "recalibrate")
    doc = _document(args, run, rows, rules, every)
    if args.out:
        from trajlab.provenance import write_json_atomic

        write_json_atomic(args.out, doc)
        log.info("results written to %s", args.out)
    emit(json.dumps(doc) if args.json else format_table(rows, every))
    return 0


# ------------------------------------------------------------------------------------------ planning


def default_every_steps(stored: list[int]) -> int:
    """The most common spacing of consecutive stored steps (the smallest on ties); 1 for < 2 snapshots."""
    diffs = Counter(b - a for a, b in zip(stored, stored[1:]))
    if not diffs:
        return 1
    top = max(diffs.values())
    return min(d for d, n in diffs.items() if n == top)


def _at_steps(asked: list[int], stored: list[int]) -> list[int]:
    steps = sorted(set(asked)) if asked else [stored[-1]]
    missing = [s for s in steps if s not in set(stored)]
    if missing:
        raise UsageError(
            f"--at-step {missing[0]}: no snapshot of that step (the last iterate is read from it); "
            f"stored: {len(stored)} snapshots, steps {stored[0]}..{stored[-1]} ({_few(stored)})"
        )
    return steps


def _rules(args: argparse.Namespace) -> list[Any]:
    from trajlab.averaging import EMA, SWA, TwoPoint

    specs = (
        [(EMA, {"decay": d}) for d in args.ema]
        + [(TwoPoint, {"gap_steps": k}) for k in args.two_point_gap]
        + [(SWA, {"start_step": s}) for s in args.swa_start]
        + [(SWA, {"window_steps": w}) for w in args.swa_window]
    )
    rules: dict[str, Any] = {}
    for cls, kwargs in specs:
        try:
            rule = cls(**kwargs)
        except ValueError as e:
            raise UsageError(str(e)) from e
        rules.setdefault(rule.name, rule)
    return list(rules.values())


def _check_representable(stored: list[int], rules: list[Any], at_steps: list[int], every: int) -> None:
    """Refuse, before loading anything, any average the snapshots cannot represent exactly."""
    from trajlab.averaging import NotRepresentableError, plan

    for rule in rules:
        for step in at_steps:
            try:
                plan(stored, rule, step, every)
            except NotRepresentableError as e:  # names the rule, the step, the missing snapshots
                raise UsageError(str(e)) from e
            except ValueError as e:  # e.g. a two-point gap that is not a multiple of every_steps
                raise UsageError(
                    f"{e} Here the averages update every {every} step(s) (--every-steps; default: the "
                    f"snapshot spacing), so use a gap that is a multiple of {every}."
                ) from e


# ------------------------------------------------------------------------------------------ evaluation


def _evaluate_all(
    run: Any, rules: list[Any], at_steps: list[int], every: int, *, recalibrate: bool
) -> list[dict[str, Any]]:
    """Rows for the last iterate (running and recalibrated BN) and every average, at every step."""
    from trajlab.averaging import plan, post_hoc_many

    floating_buffers = [n for n, b in run.model.named_buffers() if b.is_floating_point()]
    # One streaming pass; BN buffers are copied from the newest snapshot used (online buffers="copy").
    averages = post_hoc_many(run, rules, at_steps, every, device=run.device, buffer_names=floating_buffers)
    stored = run.snapshot_steps
    rows = []
    for step in at_steps:
        for bn in ("raw", "recalibrated"):
            rows.append(_row("last", step, run.evaluate(step, bn), {step: 1.0}))
        for rule in rules:
            evaluation = run.evaluate(averages[(rule.name, step)], "recalibrated" if recalibrate else "raw")
            rows.append(_row(rule.name, step, evaluation, plan(stored, rule, step, every)))
            log.info("%s at step %d: test acc %.4f", rule.name, step, evaluation.acc)
    return rows


def _row(rule: str, step: int, evaluation: Any, weights: dict[int, float]) -> dict:
    return {
        "rule": rule,
        "at_step": step,
        "bn": evaluation.bn,
        "test_loss": evaluation.loss,
        "test_acc": evaluation.acc,
        "snapshots_used": len(weights),
        "first_step_used": min(weights),
    }


# ------------------------------------------------------------------------------------------ output


def format_table(rows: list[dict[str, Any]], every: int) -> str:
    """An aligned text table of ``rows`` (rule, at_step, bn, test_loss, test_acc)."""
    cells = [list(COLUMNS)] + [
        [r["rule"], str(r["at_step"]), r["bn"], f"{r['test_loss']:.4f}", f"{r['test_acc']:.4f}"] for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cell, widths)))
        for cell in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(
        f"averages as updated every {every} step(s) (horizons in steps); built post hoc from stored snapshots"
    )
    return "\n".join(lines)


def _document(
    args: argparse.Namespace, run: Any, rows: list[dict], rules: list[Any], every: int
) -> dict[str, Any]:
    from trajlab.provenance import provenance

    return {
        "kind": "trajlab.average",
        "run_dir": str(args.run_dir),
        "every_steps": every,
        "bn": args.bn,
        "bn_batches": args.bn_batches,
        "rules": [rule.name for rule in rules],
        "rows": rows,
        "run_config": run.description(),
        "verified": run.verify,
        "run_provenance": run.provenance(),
        "provenance": provenance(seed=run.seed, device=run.device, command=command_line(args)),
    }


def _few(steps: list[int], limit: int = 6) -> str:
    if len(steps) <= limit:
        return ", ".join(map(str, steps))
    return ", ".join(map(str, steps[: limit // 2])) + ", ..., " + ", ".join(map(str, steps[-limit // 2 :]))
