"""Probe costs as ratios against baselines run side by side (medians); writes benchmarks/results/probes.json.

Setup: ResNet-20 (1 input channel, 10 classes), one batch of 128 1x32x32 random images, BN in batch mode,
float32 on CPU with ``--threads`` threads. Measured:

* grid: a 32-point fixed-grid ``line_profile`` (loop and vmap; with and without the extra forward that
  measures f(lr*)) and the default adaptive 32-point profile, against the obvious baseline
  t(one forward+backward) + 32 t(forward) of the plain model, timed back to back. Target <= 1.1x.
* adaptive from a guess (another batch's lr*, and the 32-point grid's lr* x 3): lr* and f(lr*) relative
  to the 32-point grid's, its forward count (target <= 8 + 1 backward) and its cost ratio to the grid.
* HVP: each method's time against one forward+backward, round robin, medians. The exact default
  (``double_backward``, with trajlab's cheap conv/BN double backwards) returns the gradient with Hg, so
  its figure is "g and Hg together" (target <= 3x); ``double_backward_autograd`` is the same without the
  kernels (autograd's own double backwards); ``jvp`` computes g as its primal output too;
  ``finite_difference`` is given g and adds 2 backwards (g and Hg together: that + 1).

Usage: ``python benchmarks/bench_probes.py [--repeats 3] [--threads 1] [--sections grid,hvp] [--out PATH]``
(sections not run keep their previous numbers in the output file).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from trajlab.probes import line_profile
from trajlab.probes._functional import (
    CostMeter,
    FunctionalLoss,
    detached_buffers,
    detached_params,
    probe_mode,
)
from trajlab.probes.curvature import grad_and_hvp


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _median_ratio(fn, base, repeats: int) -> float:
    """Median over repeats of t(fn) / t(base), the two timed back to back in each repeat.

    Interleaving keeps the ratio honest on a shared machine: load changes hit both sides alike.
    """
    return statistics.median(_median_time(fn, 1) / _median_time(base, 1) for _ in range(repeats))


def _model() -> torch.nn.Module:
    from trajlab.models import build_model

    return build_model("resnet20", num_classes=10, in_channels=1)


def _baseline(model, batch, n_forwards: int) -> None:
    """The obvious cost floor: one forward+backward and n plain forwards of the model itself."""
    ref = copy.deepcopy(model).train()
    ref.zero_grad()
    F.cross_entropy(ref(batch[0]), batch[1]).backward()
    with torch.no_grad():
        for _ in range(n_forwards):
            ref(batch[0])


def bench_grid(model, batch, repeats: int) -> dict:
    ref = line_profile(model, F.cross_entropy, batch, num_points=32, hvp=False)
    lrs = list(np.linspace(0, 2 * ref.lr_star, 33)[1:])  # 32 points on (0, 2 lr*]
    t_base = _median_time(lambda: _baseline(model, batch, 32), 1)

    def base() -> None:
        _baseline(model, batch, 32)

    r_grid = _median_ratio(
        lambda: line_profile(model, F.cross_entropy, batch, lrs=lrs, hvp=False), base, repeats
    )
    # The target's own accounting (1 backward + 32 forwards): lr* interpolated, not measured again.
    r_grid_no_star = _median_ratio(
        lambda: line_profile(model, F.cross_entropy, batch, lrs=lrs, hvp=False, evaluate_at_star=False),
        base,
        repeats,
    )
    r_vmap = _median_ratio(
        lambda: line_profile(model, F.cross_entropy, batch, lrs=lrs, hvp=False, evaluation="vmap"),
        base,
        repeats,
    )
    r_adapt = _median_ratio(
        lambda: line_profile(model, F.cross_entropy, batch, num_points=32, hvp=False), base, repeats
    )
    grid = line_profile(model, F.cross_entropy, batch, lrs=lrs, hvp=False)
    return {
        "baseline_1bwd_32fwd_s": t_base,
        "grid32_loop_ratio": r_grid,
        "grid32_loop_no_star_ratio": r_grid_no_star,
        "grid32_vmap_ratio": r_vmap,
        "adaptive32_ratio": r_adapt,
        "grid32_forwards": grid.cost.forwards,
        "adaptive32_forwards": ref.cost.forwards,
        "grid32": {"lr_star": grid.lr_star, "loss_at_lr_star": grid.loss_at_lr_star, "r2": grid.r2},
        "adaptive32": {"lr_star": ref.lr_star, "loss_at_lr_star": ref.loss_at_lr_star, "r2": ref.r2},
        "_grid": grid,
        "_lrs": lrs,
    }


def bench_adaptive_guess(model, batch, other_batch, grid, lrs, repeats: int) -> dict:
    prev = line_profile(model, F.cross_entropy, other_batch, num_points=32, hvp=False)
    out = {}
    for name, guess in (("other_batch_lr_star", prev.lr_star), ("grid_lr_star_x3", 3 * grid.lr_star)):
        p = line_profile(model, F.cross_entropy, batch, lr_guess=guess, hvp=False)
        ratio = _median_ratio(
            lambda: line_profile(model, F.cross_entropy, batch, lrs=lrs, hvp=False),
            lambda g=guess: line_profile(model, F.cross_entropy, batch, lr_guess=g, hvp=False),
            repeats,
        )
        out[name] = {
            "guess_over_grid_lr_star": guess / grid.lr_star,
            "lr_star_rel_err": abs(p.lr_star / grid.lr_star - 1),
            "loss_at_lr_star_rel_err": abs(p.loss_at_lr_star / grid.loss_at_lr_star - 1),
            "forwards": p.cost.forwards,
            "backwards": p.cost.backwards,
            "cost_ratio_grid32_over_adaptive": ratio,
        }
    return out


def bench_hvp(model, batch, repeats: int) -> dict:
    out: dict[str, float] = {}
    params = detached_params(model)
    with probe_mode(model, "batch"):
        floss = FunctionalLoss(model, F.cross_entropy, CostMeter(), detached_buffers(model))
        out["forward_backward_s"] = _median_time(lambda: floss.value_and_grad(params, batch), repeats)
        _, g = floss.value_and_grad(params, batch)
        contenders = {
            "double_backward": lambda: grad_and_hvp(floss, params, batch, None, "double_backward"),
            "double_backward_autograd": lambda: grad_and_hvp(
                floss, params, batch, None, "double_backward", kernels=False
            ),
            "jvp": lambda: grad_and_hvp(floss, params, batch, None, "jvp", grad=g),
            "finite_difference_given_grad": lambda: grad_and_hvp(
                floss, params, batch, None, "finite_difference", grad=g
            ),
        }
        ratios: dict[str, list[float]] = {k: [] for k in contenders}
        for _ in range(repeats):  # round robin, each contender timed right after its own baseline
            for name, fn in contenders.items():
                ratios[name].append(_median_ratio(fn, lambda: floss.value_and_grad(params, batch), 1))
    for name, values in ratios.items():
        out[f"{name}_ratio"] = statistics.median(values)
        out[f"{name}_ratios"] = values
    out["finite_difference_with_grad_ratio"] = out["finite_difference_given_grad_ratio"] + 1
    return out


def _git_sha() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sections", default="grid,hvp", help="comma-separated: grid (with adaptive), hvp")
    parser.add_argument("--out", default="benchmarks/results/probes.json")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = _model()
    batch = (torch.randn(128, 1, 32, 32), torch.randint(0, 10, (128,)))
    other = (torch.randn(128, 1, 32, 32), torch.randint(0, 10, (128,)))
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.exists() else {}
    result.update(
        {
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor(),
                "threads": args.threads,
            },
            "torch": torch.__version__,
            "git_sha": _git_sha(),
            "repeats": args.repeats,
            "setup": "resnet20 in_channels=1, batch 128 x 1x32x32 random, float32 CPU, bn=batch",
        }
    )
    if "grid" in sections:
        grid = bench_grid(model, batch, args.repeats)
        result["grid"] = {k: v for k, v in grid.items() if not k.startswith("_")}
        result["adaptive_from_guess"] = bench_adaptive_guess(
            model, batch, other, grid["_grid"], grid["_lrs"], args.repeats
        )
    if "hvp" in sections:
        result["hvp"] = bench_hvp(model, batch, args.repeats)
        result["hvp_git_sha"] = result["git_sha"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
