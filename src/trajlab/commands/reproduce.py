"""``trajlab reproduce CLAIM|all``: run the claim experiments A-H and write their verdicts.

Results go to ``OUT/<budget>/claim_X.json`` (+ PNG figures) and the training runs to the run cache
``OUT/<budget>/runs/``; a run that exists is reused, an interrupted one resumed, so the command can be
stopped and started again (also in the background: ``nohup trajlab reproduce all --jobs 2 &``; bars go
to stderr and can be turned off with ``--no-progress``). Run one ``reproduce`` per output directory at a
time.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from trajlab.commands.io import UsageError, emit, host_of
from trajlab.experiments.claims.budgets import BUDGET_NAMES

log = logging.getLogger(__name__)

CLAIM_NAMES = ("A", "B", "C", "D", "E", "F", "G", "H")
# Cheapest first: H needs no training, A and B only the base runs.
ORDER = ("H", "A", "B", "C", "D", "E", "F", "G")


def register(sub: Any) -> None:
    """Add ``reproduce`` to ``trajlab``'s subparsers."""
    p = sub.add_parser(
        "reproduce",
        help="reproduce the paper's claims A-H (verdicts, numbers and figures)",
        description="Run the claim experiments of paper.md section 5 and write OUT/BUDGET/claim_X.json "
        "with the verdict, its criterion, the numbers, n, seeds and provenance, plus figures. Training "
        "runs are cached by config and resumed when interrupted. Example: trajlab reproduce all "
        "--budget small --seeds 0,1,2 --jobs 2",
    )
    p.add_argument(
        "claim",
        metavar="CLAIM",
        help="A, B, C, D, E, F, G, H, or all; or A-map (claim A across batch size, learning rate, width, "
        "data size, training length, weight decay and BN mode, with the noisy quadratic model's prediction "
        "per cell; budgets tiny and small, seeds default 0,1); or cooldown (constant lr + the EMA the theory "
        "picks vs tuned linear cooldowns and cosine at equal steps; budgets tiny, small (the MLP) and "
        "plateau-long (the BN ResNet of the claims' plateau-long budget)); or DG-mlp "
        "(claims D and G on the plateau MLP with function-space distances and the noisy quadratic model's "
        "alignment slope; budgets tiny and small)",
    )
    p.add_argument(
        "--budget",
        choices=list(BUDGET_NAMES),
        default="small",
        help="tiny: seconds on synthetic data (a smoke test); small: about an hour on 2 CPU cores; "
        "medium: the same 3x longer (~1.5 h with --jobs 3); plateau: medium's network on all 60k "
        "images at lr 0.3, which comes near a constant-lr plateau (A, C, E, F: 46 min with --jobs 3); "
        "plateau-long: the same 1.5x longer; "
        "full: full-width ResNet-20 on 16k images, hours on CPU (default small)",
    )
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (default 0,1,2)")
    p.add_argument("--out", default="runs/claims", help="output directory (default runs/claims)")
    p.add_argument("--jobs", type=int, default=1, help="training runs side by side (default 1)")
    p.add_argument("--no-reuse", action="store_true", help="retrain runs even when a cached copy exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_reproduce)


def parse_claims(text: str) -> list[str]:
    """``all`` or a comma-separated list of claim letters -> the letters in running order."""
    if text.strip().lower() == "all":
        return list(ORDER)
    asked = [c.strip().upper() for c in text.split(",") if c.strip()]
    bad = [c for c in asked if c not in CLAIM_NAMES]
    if bad or not asked:
        raise UsageError(
            f"unknown claim {', '.join(bad) or text!r}; use one of {', '.join(CLAIM_NAMES)} or all"
        )
    return [c for c in ORDER if c in asked]


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> ``(0, 1, 2)``, with a clear error for anything else."""
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise UsageError(f"--seeds expects comma-separated integers like 0,1,2, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise UsageError(f"--seeds needs distinct non-negative integers, got {text!r}")
    return seeds


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Handler of ``trajlab reproduce``."""
    from trajlab.experiments.claims import CLAIMS, prepare_runs

    if args.claim.strip().lower() == "a-map":
        return _run_amap(args)
    if args.claim.strip().lower() == "dg-mlp":
        return _run_dg_mlp(args)
    if args.claim.strip().lower() == "cooldown":
        return _run_cooldown(args)
    claims = parse_claims(args.claim)
    seeds = parse_seeds(args.seeds)
    if args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    out = Path(args.out) / args.budget
    opts = {"budget": args.budget, "seeds": seeds, "progress": not args.no_progress, "host": host_of(args)}
    t0 = time.perf_counter()
    if set(claims) - {"H"}:
        # --no-reuse retrains every run once, here; the drivers then find them in the cache.
        prepare_runs(out, claims=claims, jobs=args.jobs, reuse=not args.no_reuse, **opts)
    rows = []
    for c in claims:
        t = time.perf_counter()
        doc = CLAIMS[c](out, jobs=args.jobs, reuse=True, **opts)
        rows.append((c, doc["verdict"]["verdict"], time.perf_counter() - t))
        log.info("claim %s: %s (%.0f s)", c, doc["verdict"]["verdict"], rows[-1][2])
    report = _write_report(out, args.budget)
    emit(_table(rows, out, time.perf_counter() - t0) + (f"\nreport: {report.resolve()}" if report else ""))
    return 0


def _run_amap(args: argparse.Namespace) -> int:
    """``trajlab reproduce A-map``: its own cells and budgets (``tiny``, ``small``)."""
    from trajlab.experiments.claims.amap import AMAP_BUDGETS, run_claim_amap

    if args.budget not in AMAP_BUDGETS:
        raise UsageError(f"A-map --budget: one of {', '.join(AMAP_BUDGETS)}, got {args.budget}")
    seeds = parse_seeds(args.seeds if args.seeds != "0,1,2" else "0,1")
    if args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    out = Path(args.out) / args.budget
    t0 = time.perf_counter()
    doc = run_claim_amap(
        out, budget=args.budget, seeds=seeds, reuse=not args.no_reuse, jobs=args.jobs,
        progress=not args.no_progress, host=host_of(args),
    )  # fmt: skip
    lines = [
        f"{'cell':<26} measured  predicted  from N/S  typical  lr*/lr   R^2    held-out  N/S    8 steps  "
        "test acc"
    ]
    for name, c in doc["cells"].items():
        accs = "/".join(f"{100 * a:.0f}" for a in c["final_test_acc"])
        lines.append(
            f"{name:<26} {c['one_step_fraction']:8.3f}  {c['predicted_fraction']:9.3f}  "
            f"{c['predicted_from_noise']:8.3f}  {c['predicted_from_typical_noise']:7.3f}  "
            f"{c['lr_star_over_lr']:6.2f}  {c['r2']:5.3f}  {c['heldout_fraction']:8.3f}  "
            f"{c['noise_to_signal']:<6.3g} {c.get('fraction_after_8_steps', float('nan')):7.3f}  {accs}"
        )
    lines.append(f"results: {(out / 'claim_A-map.json').resolve()} ({time.perf_counter() - t0:.0f} s)")
    lines.append(_report_line(out, args.budget))
    emit("\n".join(lines))
    return 0


def _run_dg_mlp(args: argparse.Namespace) -> int:
    """``trajlab reproduce DG-mlp``: claims D and G on the plateau MLP (budgets ``tiny``, ``small``)."""
    from trajlab.experiments.claims.dg_mlp import DG_BUDGETS, run_claim_dg_mlp

    if args.budget not in DG_BUDGETS:
        raise UsageError(f"DG-mlp --budget: one of {', '.join(DG_BUDGETS)}, got {args.budget}")
    if args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    out = Path(args.out) / args.budget
    t0 = time.perf_counter()
    doc = run_claim_dg_mlp(
        out, budget=args.budget, seeds=parse_seeds(args.seeds), reuse=not args.no_reuse, jobs=args.jobs,
        progress=not args.no_progress, host=host_of(args),
    )  # fmt: skip
    d, g = doc["D"]["verdict"], doc["G"]["verdict"]
    e = d["end_over_start"]
    lines = [
        f"D: {d['verdict']}; same batches, end/start: |Delta| {e['distance']['mean']:.3f}, "
        f"1/2 Delta^T H Delta {e['quadratic']['mean']:.3f}, logits {e['logit']['mean']:.3f}",
        f"G: {g['verdict']}; cos slope {g['loglog_slope']['mean']:.3f} +- {g['loglog_slope']['std']:.3f}, "
        f"NQM {g['nqm_slope']['mean']:.3f}; N/S slope {g['ns_slope']['mean']:.3f} (NQM -1; "
        f"{g['ns_slope_if_curvature_scales']['mean']:.3f} with lambda_max ~ lr^"
        f"{g['lambda_max_slope']['mean']:.2f})",
        f"results: {(out / 'claim_DG-mlp.json').resolve()} ({time.perf_counter() - t0:.0f} s)",
    ]
    lines.append(_report_line(out, args.budget))
    emit("\n".join(lines))
    return 0


def _run_cooldown(args: argparse.Namespace) -> int:
    """``trajlab reproduce cooldown``: the moonshot (issue 16), every budget of ``COOLDOWN_BUDGETS``."""
    from trajlab.experiments.claims.cooldown import COOLDOWN_BUDGETS, run_cooldown, table_lines

    if args.budget not in COOLDOWN_BUDGETS:
        raise UsageError(f"cooldown --budget: one of {', '.join(COOLDOWN_BUDGETS)}, got {args.budget}")
    if args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    out = Path(args.out) / args.budget
    t0 = time.perf_counter()
    doc = run_cooldown(
        out, budget=args.budget, seeds=parse_seeds(args.seeds), reuse=not args.no_reuse, jobs=args.jobs,
        progress=not args.no_progress, host=host_of(args),
    )  # fmt: skip
    lines = table_lines(doc)
    lines.append(f"results: {(out / 'claim_cooldown.json').resolve()} ({time.perf_counter() - t0:.0f} s)")
    lines.append(_report_line(out, args.budget))
    emit("\n".join(lines))
    return 0


def _report_line(out: Path, budget: str) -> str:
    """Rewrite ``OUT/BUDGET/report.html`` with this result beside the earlier ones; the line naming it."""
    report = _write_report(out, budget)
    return f"report: {report.resolve()}" if report else ""


def _write_report(out: Path, budget: str) -> Path | None:
    """``OUT/BUDGET/report.html`` from every claim result there (also those of earlier invocations)."""
    from trajlab.reports.html import build_report

    results = sorted(out.glob("claim_*.json"))
    if not results:
        return None
    return build_report(
        [], out / "report.html", extra_results=results, title=f"trajlab: the paper's claims (budget {budget})"
    )


def _table(rows: list[tuple[str, str, float]], out: Path, total_s: float) -> str:
    lines = ["claim  verdict          time"]
    lines += [f"{c:<5}  {v:<15}  {s:6.0f} s" for c, v, s in rows]
    lines.append(f"results: {out.resolve()}/claim_*.json (total {total_s:.0f} s)")
    return "\n".join(lines)
