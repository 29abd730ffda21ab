"""Closed forms of trajlab.theory vs its exact simulator at 10^6 steps, and the simulator's speed.

Writes benchmarks/results/theory_agreement.json. Run: .venv/bin/python benchmarks/theory_agreement.py
(about two minutes on one core; --steps / --directions shrink it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

from trajlab.theory import NoisyQuadratic, simulate
from trajlab.theory._rules import RuleSpec

RULES = {
    "ema_0.99": RuleSpec("ema", decay=0.99),
    "two_point_200": RuleSpec("two_point", gap=200, points=2),
    "multi_point_100x4": RuleSpec("multi_point", gap=100, points=4),
    "swa_window_100": RuleSpec("swa", window=100),
}


def _git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "uncommitted"


def _compare(closed: np.ndarray, simulated: np.ndarray, se: np.ndarray) -> dict:
    rel = np.abs(simulated - closed) / closed
    return {
        "max_rel_error": float(rel.max()),
        "median_rel_error": float(np.median(rel)),
        "fraction_within_2pct": float(np.mean(rel <= 0.02)),
        "max_abs_z": float(np.max(np.abs(simulated - closed) / se)),
        "max_rel_se": float(np.max(se / closed)),
    }


def agreement(model: NoisyQuadratic, steps: int, seeds: int, noise: str, seed: int) -> dict:
    r = simulate(
        model, steps, seeds=seeds, rules=RULES, lags=(1, 10), memory_lags=(0, 5), seed=seed, noise=noise
    )
    out = {
        "seconds": r["seconds"],
        "burn_in_steps": r["burn_in_steps"],
        "sgd": {
            "excess_loss_closed": model.excess_loss(),
            "excess_loss_sim": r["excess_loss"],
            "excess_loss_rel_error": abs(r["excess_loss"] / model.excess_loss() - 1),
            "excess_loss_rel_se": r["excess_loss_se"] / model.excess_loss(),
            "per_direction_variance": _compare(model.stationary_variance(), r["variance"], r["variance_se"]),
        },
        "autocovariance_rel_error": {
            str(k): float(np.sum(r["autocovariance"][k]) / np.sum(model.autocovariance(k)) - 1)
            for k in (1, 10)
        },
        "gradient_alignment": {"closed": model.gradient_alignment(), "sim": r["gradient_alignment"]},
        "batch_memory": {
            str(k): {"closed": float(c), "sim": r["memory"][k]}
            for k, c in zip((0, 5), model.batch_memory([0, 5]))
        },
        "rules": {},
    }
    for name, rule in RULES.items():
        sim, closed = r["rules"][name], model.excess_loss(rule)
        out["rules"][name] = {
            "excess_loss_closed": closed,
            "excess_loss_sim": sim["excess_loss"],
            "excess_loss_rel_error": abs(sim["excess_loss"] / closed - 1),
            "excess_loss_rel_se": sim["excess_loss_se"] / closed,
            "per_direction_variance": _compare(
                model.stationary_variance(rule), sim["variance"], sim["variance_se"]
            ),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--directions", type=int, default=1000)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "theory_agreement.json"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # lr h spans [0.02, 1]: relaxation times 1..50 steps; 10^6 steps give ~1% standard errors per direction.
    curvatures = np.geomspace(0.02, 1.0, args.directions)
    plain = NoisyQuadratic(curvatures, 1.0, lr=1.0)
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
        },
        "git_sha": _git_sha(),
        "numpy": np.__version__,
        "config": {
            "steps": args.steps,
            "directions": args.directions,
            "lr": 1.0,
            "curvatures": "geomspace(0.02, 1)",
        },
    }
    t0 = time.perf_counter()
    speed = simulate(plain, args.steps, lags=(), memory_lags=(), noise="rademacher", seed=0)
    result["speed_plain_rademacher_seconds"] = speed["seconds"]
    result["speed_wall_seconds"] = time.perf_counter() - t0
    result["no_momentum_gaussian"] = agreement(plain, args.steps, 1, "gaussian", seed=1)
    momentum = NoisyQuadratic(
        np.geomspace(0.02, 1.0, max(args.directions // 10, 2)), 1.0, lr=0.1, momentum=0.9
    )
    result["momentum_0.9_gaussian"] = agreement(momentum, args.steps, 1, "gaussian", seed=2)
    result["momentum_0.9_gaussian"]["directions"] = momentum.dim
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
