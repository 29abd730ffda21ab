"""The plateau demo's verdicts: the claims table (claim, measured, predicted, agreement), ``summary.json``
(issue 15's schema) and the printout, from the document :mod:`~trajlab.experiments.plateau_summary` builds.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from trajlab.experiments.plateau_measure import (
    E_HALF_LR_TOLERANCE,
    EQUIVALENT_LR_FACTOR,
    GAIN_CURVE_TOLERANCE,
    bracket_check,
    ladder_reading_at,
    normalised_l1,
)


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
        "rings_below_gap": _ringing(gaps, pred_list),
    }


def _ringing(gaps: list[int], gains: list[float]) -> int | None:
    """The largest gap where the predicted gain dips (by more than 10% of its maximum below both an
    earlier and a later value: heavy-ball ringing of a group with one curvature in the complex-root
    regime), None when it never does."""
    g = np.asarray(gains, dtype=np.float64)
    if g.size < 2 or not np.isfinite(g).all():
        return None
    tol = 0.1 * np.max(g)
    dips = [
        gaps[j]
        for j in range(1, g.size - 1)
        if np.max(g[:j]) - g[j] > tol and np.max(g[j + 1 :]) - g[j] > tol
    ]
    return max(dips) if dips else None


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
            + ("; the prediction is all zeros" if g["all_zero"] else "")
            + (
                f"; the predicted curve rings up to gap {g['rings_below_gap']} (each fitted group has one "
                "curvature; a band of curvatures would average the ringing out, as the measured curve does)"
                if g["rings_below_gap"]
                else ""
            ),
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
