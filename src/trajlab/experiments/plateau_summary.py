"""The plateau demo's measurements on its runs, the theory's predictions, the claims table and summary.json.

:func:`measure` reads the base run (evaluation rows, snapshots) and the ladder branches (evaluation rows)
into one JSON-ready document; :func:`fit` adds the theory (``plateau_measure.theory_beside_measurement``);
:func:`claims_table` puts the paper's claims, what was measured, what the theory predicted and whether
they agree in one table; :func:`summary_json` is ``OUT/summary.json`` (the schema of issue 15).

Conventions: gains are decreases of the test loss (positive = better); every reading of a loss or an
accuracy is averaged over end times (``f_end_times`` for the ladder and the EMAs, ``two_point.end_times``
for two-point averages), with the standard error of that mean.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from trajlab.experiments.claims import common
from trajlab.experiments.plateau_measure import (
    E_HALF_LR_TOLERANCE,
    EQUIVALENT_LR_FACTOR,
    GAIN_CURVE_TOLERANCE,
    bracket_check,
    ladder_reading_at,
    mean_se,
    measured_equivalent_lr,
    normalised_l1,
    theory_beside_measurement,
)

# Curves kept for the F plot start this many steps before the branch point.
_CURVE_LEAD_STEPS_FRACTION = 0.25


def _series(run_dir: Path, key: str) -> dict[int, float]:
    return common.eval_series(run_dir, key)


def _readings(series: Mapping[int, float], steps: list[int]) -> dict[str, float]:
    m, se = mean_se([series[s] for s in steps if s in series])
    return {"mean": m, "se": se, "n": sum(s in series for s in steps)}


def measure(
    run: Any,
    b: Any,
    plateau: dict[str, Any],
    branch_step: int,
    ladder_dirs: Mapping[int, Path],
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """Everything the demo measures on the base run ``run`` (a ``RecordedRun``) and its ladder."""
    cfg = run.config
    lr, mu, total = cfg.optim.lr, cfg.optim.momentum, cfg.train.steps
    base_dir = Path(run.run_dir)
    base = {m: _series(base_dir, f"test_{m}") for m in ("loss", "acc")}
    ema = {d: {m: _series(base_dir, f"ema_{d:g}/test_{m}") for m in ("loss", "acc")} for d in b.ema_decays}
    branches = {d: {m: _series(p, f"test_{m}") for m in ("loss", "acc")} for d, p in ladder_dirs.items()}
    # F end times: the second half of the ladder window (every branch has had time to relax), at the
    # evaluations every run has.
    half = branch_step + (total - branch_step) // 2
    common_steps = set(base["loss"]).intersection(*(set(br["loss"]) for br in branches.values()))
    f_steps = sorted(s for s in common_steps if s >= half)
    doc: dict[str, Any] = {
        "lr": lr,
        "momentum": mu,
        "steps": total,
        "plateau": plateau,
        "branch_step": branch_step,
        "branch_in_plateau": bool(plateau["found"] and plateau["start_step"] <= branch_step),
        "f_end_times": f_steps,
        "config": cfg.to_dict(),
        "seeds": [cfg.train.seed],
    }
    rungs = {m: {lr: _readings(base[m], f_steps)} for m in ("loss", "acc")}
    for d, br in branches.items():
        for m in ("loss", "acc"):
            rungs[m][lr / d] = _readings(br[m], f_steps)
    doc["ladder"] = [
        {"lr": r, "divisor": lr / r, "test_loss": rungs["loss"][r], "test_acc": rungs["acc"][r]}
        for r in sorted(rungs["loss"], reverse=True)
    ]
    doc["ema"] = [_ema_entry(d, ema[d], f_steps, rungs, lr) for d in b.ema_decays]
    lead = int(_CURVE_LEAD_STEPS_FRACTION * (total - branch_step))
    doc["curves"] = {
        "constant_lr": _curve(base["loss"], branch_step - lead),
        **{f"ema_{d:g}": _curve(ema[d]["loss"], branch_step - lead) for d in b.ema_decays},
        **{f"lr/{d}": _curve(br["loss"], branch_step) for d, br in branches.items()},
    }
    doc["theory_ladder"] = [
        {
            "lr": lr / d,
            "ages": [s - branch_step for s in sorted(br["loss"]) if s > branch_step],
            "losses": [br["loss"][s] for s in sorted(br["loss"]) if s > branch_step],
        }
        for d, br in branches.items()
    ]
    doc["two_point"] = _two_point(run, b, plateau, base, branches.get(2), progress)
    doc["hessian_top_eigenvalue"] = _top_eigenvalue(run, total)
    return doc


def _top_eigenvalue(run: Any, step: int, batches: int = 8) -> dict[str, Any]:
    """The training Hessian's top eigenvalue at ``step`` (Lanczos, exact HVPs) on the loss of the last
    ``batches`` training batches: an upper bound on every curvature group of the theory."""
    from trajlab.probes import top_eigenvalues

    steps = [s for s in run.batch_steps if s <= step][-batches:]
    top = top_eigenvalues(
        run.load_weights(step), run.loss_fn, data=[run.batch(s) for s in steps], tol=1e-3, max_iter=60
    )
    return {"value": top.eigenvalues[0], "converged": top.converged[0], "batches": steps, "hvps": top.hvps}


def _curve(series: Mapping[int, float], start: int) -> dict[str, list]:
    steps = [s for s in sorted(series) if s >= start]
    return {"steps": steps, "test_loss": [series[s] for s in steps]}


def _ema_entry(decay: float, ema: dict, f_steps: list[int], rungs: dict, lr: float) -> dict[str, Any]:
    entry: dict[str, Any] = {"decay": decay, "horizon_steps": 1 / (1 - decay)}
    for m in ("loss", "acc"):
        reading = _readings(ema[m], f_steps)
        ladder = {r: v["mean"] for r, v in rungs[m].items()}
        eq, note = measured_equivalent_lr(ladder, reading["mean"], higher_is_better=m == "acc")
        entry[f"test_{m}"] = reading
        entry[f"measured_equivalent_lr_{m}"] = eq
        entry[f"measured_equivalent_lr_{m}_note"] = note
    return entry


def _has_bn(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _two_point(
    run: Any, b: Any, plateau: dict, base: dict, half: dict | None, progress: bool
) -> dict[str, Any]:
    """Test loss/acc of 1/2 (theta_t + theta_{t-k}) minus the last iterate's, per gap, at each end time."""
    from tqdm.auto import tqdm

    bn = "recalibrated" if _has_bn(run.model) else "raw"
    stored = set(run.snapshot_steps)
    ends = [t for t in b.end_times if t in stored]
    gaps = [k for k in b.gaps if all(t - k in stored for t in ends)]
    start = plateau["start_step"] if plateau["found"] else None
    last = {t: run.evaluate(t, bn) for t in ends}
    gain: dict[int, list[float]] = {k: [] for k in gaps}
    acc: dict[int, list[float]] = {k: [] for k in gaps}
    with tqdm(
        total=len(ends) * len(gaps), desc="two-point averages", disable=not progress, leave=False
    ) as bar:
        for t in ends:
            wt = run.load(t)
            for k in gaps:
                wk = run.load(t - k)
                avg = {n: (x + wk[n]) / 2 if x.is_floating_point() else x for n, x in wt.items()}
                ev = run.evaluate(avg, bn)
                gain[k].append(last[t].loss - ev.loss)
                acc[k].append(ev.acc - last[t].acc)
                bar.update()
    out: dict[str, Any] = {
        "end_times": ends,
        "gaps": gaps,
        "bn": bn,
        "gaps_in_plateau": [k for k in gaps if start is not None and min(ends) - k >= start],
        "measured_gain": [mean_se(gain[k])[0] for k in gaps],
        "measured_gain_se": [mean_se(gain[k])[1] for k in gaps],
        "measured_acc_gain": [mean_se(acc[k])[0] for k in gaps],
        "last_iterate_test_loss": mean_se([last[t].loss for t in ends]),
    }
    if half is not None:
        paired = [base["loss"][t] - half["loss"][t] for t in ends if t in half["loss"] and t in base["loss"]]
        out["half_lr_gain"], out["half_lr_gain_se"] = mean_se(paired)
        out["half_lr_acc_gain"] = mean_se(
            [half["acc"][t] - base["acc"][t] for t in ends if t in half["acc"] and t in base["acc"]]
        )[0]
    return out


# ------------------------------------------------------------------------------------------------ theory


def fit(doc: dict[str, Any]) -> dict[str, Any]:
    """The theory's predictions from the document's measurements (each fit holds out what it predicts)."""
    tp = doc["two_point"]
    gaps = tp["gaps_in_plateau"] or tp["gaps"]
    idx = [tp["gaps"].index(k) for k in gaps]
    constant = doc["ladder"][0]["test_loss"]
    theory = theory_beside_measurement(
        lr=doc["lr"],
        momentum=doc["momentum"],
        last=(constant["mean"], constant["se"]),
        gaps=gaps,
        gains=[(tp["measured_gain"][i], tp["measured_gain_se"][i]) for i in idx],
        ema={e["decay"]: (e["test_loss"]["mean"], e["test_loss"]["se"]) for e in doc["ema"]},
        branches=doc["theory_ladder"],
        end_ages=[s - doc["branch_step"] for s in doc["f_end_times"]],
        hessian_top_eigenvalue=(doc.get("hessian_top_eigenvalue") or {}).get("value"),
    )
    theory["gaps"] = gaps
    if not tp["gaps_in_plateau"]:
        theory["note"] = "no plateau was found: every gap was fitted, stationarity is not guaranteed"
    return theory


def _rung_runs(doc: dict[str, Any], predicted_lr: float) -> tuple[dict[str, float], list[str]]:
    ladder = {r["lr"]: r["test_loss"]["mean"] for r in doc["ladder"]}
    runs, extrapolated = {}, []
    for name, lr in (("predicted", predicted_lr), ("2x", 2 * predicted_lr), ("half", predicted_lr / 2)):
        if not math.isfinite(lr) or lr <= 0:
            runs[name] = math.nan
            continue
        runs[name], ext = ladder_reading_at(ladder, lr)
        if ext:
            extrapolated.append(name)
    return runs, extrapolated


def ema_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Per EMA: measured vs predicted equivalent lr, the factor between them, and the bracket check."""
    pred = doc["theory"].get("ema_prediction", {})
    rows = []
    for i, e in enumerate(doc["ema"]):
        on_ladder = _at(pred.get("equivalent_lr_on_ladder"), i)
        stationary = _at(pred.get("equivalent_lr"), i)
        predicted = on_ladder if math.isfinite(on_ladder) else stationary
        measured = e["measured_equivalent_lr_loss"]
        factor = (
            max(measured / predicted, predicted / measured) if predicted > 0 and measured > 0 else math.nan
        )
        runs, ext = _rung_runs(doc, predicted)
        rows.append(
            {
                "decay": e["decay"],
                "measured": measured,
                "measured_acc": e["measured_equivalent_lr_acc"],
                "predicted": predicted,
                "predicted_stationary": stationary,
                "factor": factor,
                "within_factor": factor <= EQUIVALENT_LR_FACTOR if math.isfinite(factor) else None,
                "bracket": bracket_check(e["test_loss"]["mean"], runs, extrapolated=ext),
                "reason": (pred.get("reasons") or {}).get(f"ema[{e['decay']}]") or pred.get("error"),
            }
        )
    return rows


def gain_rows(doc: dict[str, Any]) -> dict[str, Any]:
    """The two-point gains: measured, predicted (EMAs and ladder fit), largest gap vs the lr/2 branch."""
    tp, theory = doc["two_point"], doc["theory"]
    pred = theory.get("gain_prediction", {})
    predicted = dict(zip(pred.get("gaps", []), pred.get("gain", [])))
    gaps = theory["gaps"]
    measured = [tp["measured_gain"][tp["gaps"].index(k)] for k in gaps]
    pred_list = [predicted.get(k, math.nan) for k in gaps]
    kmax = max(gaps) if gaps else None
    largest = measured[-1] if gaps else math.nan
    half = tp.get("half_lr_gain", math.nan)
    rel = abs(largest - half) / abs(half) if half and math.isfinite(half) else math.nan
    l1 = normalised_l1(pred_list, measured)
    return {
        "gaps": gaps,
        "measured": measured,
        "predicted": pred_list,
        "predicted_reason": pred.get("error") or _gain_reason(pred, gaps, pred_list),
        "all_zero": bool(pred_list) and all((not math.isfinite(p)) or p == 0 for p in pred_list),
        "largest_gap": kmax,
        "largest_gap_gain": largest,
        "half_lr_gain": half,
        "largest_vs_half_relative": rel,
        "largest_vs_half_ok": rel <= E_HALF_LR_TOLERANCE if math.isfinite(rel) else None,
        "normalised_l1": l1,
        "l1_ok": l1 <= GAIN_CURVE_TOLERANCE if math.isfinite(l1) else None,
    }


def _gain_reason(pred: dict[str, Any], gaps: list[int], values: list[float]) -> str | None:
    """Why no gain could be predicted, when none could (the fit's reason for the first gap)."""
    if values and all(not math.isfinite(v) for v in values):
        return (pred.get("reasons") or {}).get(f"gain[{gaps[0]}]", "the fit predicts no gain")
    return None


def _at(values: Any, i: int) -> float:
    try:
        v = float(values[i])
    except (TypeError, IndexError, ValueError):
        return math.nan
    return v


def _lr_text(lr: float, base: float) -> str:
    return f"lr/{base / lr:.3g} ({lr:.3g})" if math.isfinite(lr) and lr > 0 else "n/a"


def _yes(ok: bool | None) -> str:
    return "n/a" if ok is None else "yes" if ok else "no"


def _train_note(p: dict[str, Any]) -> str:
    train = p.get("train_loss_plateau") or {}
    if p["series"] == "train loss" or train.get("found", True):
        return ""
    means = train.get("window_means") or [math.nan]
    return f"; the train loss still drifts (last window mean {means[-1]:.3f}), so the test loss decided"


def claims_table(doc: dict[str, Any]) -> list[dict[str, str]]:
    """The report's first table: claim, measured, predicted, agreement (strings, one row per claim)."""
    lr, p = doc["lr"], doc["plateau"]
    rows = [
        {
            "claim": "Weights settle into a quasi-stationary distribution at a constant lr (the plateau)",
            "measured": (
                f"{p['series']} plateaus from step {p['start_step']} "
                f"(drift {p['drift']:.2g} ± {p['drift_se']:.2g} over {p['length_steps']} steps, "
                f"level {p['level']:.3f}){_train_note(p)}; ladder branches at step {doc['branch_step']}"
                if p["found"]
                else f"no plateau in {doc['steps']} steps; ladder branches at step {doc['branch_step']}"
            ),
            "predicted": "assumed by the theory (stationary moments)",
            "agreement": _yes(p["found"] and doc["branch_in_plateau"]),
        }
    ]
    for r in ema_rows(doc):
        b = r["bracket"]
        rows.append(
            {
                "claim": f"F: EMA {r['decay']:g} equals SGD at a reduced constant lr",
                "measured": f"{_lr_text(r['measured'], lr)} on test loss, "
                f"{_lr_text(r['measured_acc'], lr)} on accuracy (EMA placed on the lr ladder)",
                "predicted": f"{_lr_text(r['predicted'], lr)} read on the predicted ladder; stationary "
                f"{_lr_text(r['predicted_stationary'], lr)}" + (f" ({r['reason']})" if r["reason"] else ""),
                "agreement": f"factor {r['factor']:.2g} ({'within' if r['within_factor'] else 'not within'} "
                f"{EQUIVALENT_LR_FACTOR:g}); nearer the predicted-lr run than 2x and 1/2x: "
                f"{_yes(b['passed'])}"
                + (f" (extrapolated: {', '.join(b['extrapolated'])})" if b["extrapolated"] else ""),
            }
        )
    g = gain_rows(doc)
    rows.append(
        {
            "claim": "E: a two-point average of far-apart iterates equals the lr/2 run",
            "measured": f"gain at gap {g['largest_gap']}: {g['largest_gap_gain']:.4f}; lr/2 branch gain "
            f"{g['half_lr_gain']:.4f} (test loss)",
            "predicted": "equal at gaps past every relaxation time (gain = half the excess loss)",
            "agreement": f"{_yes(g['largest_vs_half_ok'])} (differ by {g['largest_vs_half_relative']:.0%}; "
            f"tolerance {E_HALF_LR_TOLERANCE:.0%})",
        }
    )
    rows.append(
        {
            "claim": "E: the gain rises with the gap below the relaxation time, then stays flat",
            "measured": f"gain from {g['measured'][0]:.4f} at gap {g['gaps'][0]} to {max(g['measured']):.4f}"
            if g["gaps"]
            else "no gap measured",
            "predicted": (
                g["predicted_reason"]
                or "fitted on the EMAs and the ladder (gains held out): normalised L1 "
                f"{g['normalised_l1']:.2f}"
            ),
            "agreement": f"{_yes(g['l1_ok'])} (L1 <= {GAIN_CURVE_TOLERANCE:.2f})"
            + ("; the prediction is all zeros" if g["all_zero"] else ""),
        }
    )
    return rows


# ------------------------------------------------------------------------------------------- summary.json


def summary_json(doc: dict[str, Any], *, wall_seconds: float) -> dict[str, Any]:
    """``OUT/summary.json`` in issue 15's schema (plus fields beside it)."""
    e_rows, g = ema_rows(doc), gain_rows(doc)
    return {
        "plateau": {
            "reached": bool(doc["plateau"]["found"]),
            "from_step": int(doc["plateau"]["start_step"]),
            "series": doc["plateau"]["series"],
            "branch_step": doc["branch_step"],
        },
        "ema": [
            {
                "decay": r["decay"],
                "measured_equivalent_lr": r["measured"],
                "predicted_equivalent_lr": r["predicted"],
                "ema_test_loss": e["test_loss"]["mean"],
                "constant_lr_test_loss": doc["ladder"][0]["test_loss"]["mean"],
                "measured_equivalent_lr_on_accuracy": r["measured_acc"],
                "predicted_equivalent_lr_stationary": r["predicted_stationary"],
                "factor": r["factor"],
                "nearer_predicted_than_2x_and_half": r["bracket"]["passed"],
            }
            for r, e in zip(e_rows, doc["ema"])
        ],
        "two_point": {
            "gaps": g["gaps"],
            "measured_gain": g["measured"],
            "predicted_gain": g["predicted"],
            "half_lr_gain": g["half_lr_gain"],
            "largest_gap_gain": g["largest_gap_gain"],
            "largest_gap": g["largest_gap"],
            "normalised_l1": g["normalised_l1"],
            "all_gaps": doc["two_point"]["gaps"],
            "all_measured_gain": doc["two_point"]["measured_gain"],
        },
        "ladder": [{"lr": r["lr"], "test_loss": r["test_loss"]["mean"]} for r in doc["ladder"]],
        "wall_seconds": wall_seconds,
        "provenance": doc.get("provenance"),
    }


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """The printout of ``trajlab demo``: plateau, each EMA, the two-point gains."""
    if not summary:
        return []
    p = summary["plateau"]
    lr = summary["ladder"][0]["lr"]
    rows = [
        (
            "plateau",
            f"from step {p['from_step']} ({p['series']}); ladder from step {p['branch_step']}"
            if p["reached"]
            else f"not reached; ladder from step {p['branch_step']}",
        ),
        (
            "ladder test loss",
            ", ".join(f"lr/{lr / r['lr']:.3g} {r['test_loss']:.4f}" for r in summary["ladder"]),
        ),
    ]
    for e in summary["ema"]:
        rows.append(
            (
                f"EMA {e['decay']:g}",
                f"test loss {e['ema_test_loss']:.4f}: measured {_lr_text(e['measured_equivalent_lr'], lr)}, "
                f"predicted {_lr_text(e['predicted_equivalent_lr'], lr)}, factor {e['factor']:.2g}",
            )
        )
    t = summary["two_point"]
    rows.append(
        (
            "two-point gain",
            f"gap {t['largest_gap']}: {t['largest_gap_gain']:.4f} vs lr/2 branch {t['half_lr_gain']:.4f}; "
            f"gain curve (gaps {t['gaps'][0] if t['gaps'] else '-'}..{t['largest_gap']}) predicted with "
            f"normalised L1 {t['normalised_l1']:.2f}",
        )
    )
    return rows


def finite(obj: Any) -> Any:
    """JSON-safe copy: nan/inf become None, numpy scalars Python numbers, int dict keys strings."""
    if isinstance(obj, dict):
        return {str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
