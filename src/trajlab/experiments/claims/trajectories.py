"""Claim D: two trajectories.

Design (both pairs start inside the window of the base run of each seed, T2 = the window start):

* **Same batches, different starts.** theta_{T1} (a checkpoint ``pair_offset_steps`` earlier, T1 = T2 -
  offset, with its momentum buffer) is trained on exactly the batches the base run uses after T2
  (B_{T2+1}, B_{T2+2}, ...: same indices, same augmentation draws). The other trajectory is the base run
  itself from theta_{T2}. Both sit on the same quasi-stationary trajectory, so they are in the same basin
  (two independently initialised networks would not be). The distance |theta'_t - theta_t| is read at the
  base run's snapshots. The replay uses the training step of the engine (train-mode forward, mean
  cross-entropy, the run's SGD with its weight decay and momentum) at the constant lr.
* **Same start, different orders.** The base run branched at T2 into a run with ``train.seed`` + 1000
  (another batch order and augmentation stream) for ``pair_steps`` steps; distance to the base run at the
  common snapshots.

Parameters only (no BN buffers) enter the distances.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trajlab.config import HostSettings
from trajlab.experiments.claims import common
from trajlab.experiments.claims.base_runs import prepare_base_runs
from trajlab.experiments.claims.budgets import Budget, base_spec, reorder_spec
from trajlab.experiments.claims.cache import ensure_runs
from trajlab.runs import RecordedRun

log = logging.getLogger(__name__)

# "Levels off": the last third of the run adds less than this fraction of the final distance.
D_PLATEAU_FRACTION = 0.25


def _param_distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], keys: Sequence[str]) -> float:
    return float(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in keys)) ** 0.5


def _replay_from(
    run_dir: Path,
    ckpt_step: int,
    first_step: int,
    steps: int,
    read_at: Sequence[int],
    host: HostSettings | None = None,
    weights: dict[str, torch.Tensor] | None = None,
) -> dict[int, dict[str, torch.Tensor]]:
    """Train the checkpoint at ``ckpt_step`` on the run's batches ``first_step + 1 .. first_step + steps``
    (``weights``: start from these weights instead, with the checkpoint's optimizer state).

    Returns:
        ``{step: state_dict}`` at the steps in ``read_at`` (the run's step numbering).
    """
    from trajlab.runs import build
    from trajlab.runs.runner import load_run_config
    from trajlab.trajectory import load_checkpoint

    cfg = load_run_config(run_dir)
    state = load_checkpoint(run_dir / "checkpoints" / f"ckpt_{ckpt_step:09d}.pt")
    train_ds = build.build_train_data(cfg, (host or HostSettings()).data_dirs)
    model = build.build_model_for(cfg, train_ds)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.load_state_dict(state["model"] if weights is None else weights)
    opt = build.build_optimizer_for(cfg, model)
    opt.load_state_dict(state["optimizer"])
    batches = build.DatasetBatches(
        train_ds,
        cfg.data,
        batch_size=cfg.train.batch_size,
        seed=cfg.train.seed,
        device=torch.device("cpu"),
        channels_last=cfg.model.channels_last,
    )
    schedule = build.build_schedule_for(cfg, build.total_steps_for(cfg, len(train_ds)))
    out = {}
    model.train()
    # The run's own thread count: another one changes the order of float sums in the kernels, and 50
    # steps of training amplify that to ~2.5% of the weights (measured at budget medium); with the same
    # count the replay is bit-exact. The library sets no thread count itself: only through the host.
    host = host or HostSettings()
    threads = torch.get_num_threads()
    wanted = cfg.train.num_threads or threads
    if host.set_threads is not None:
        host.set_threads(wanted)
    elif wanted != threads:
        log.warning(
            "replaying at %d threads, the run used %d: the replay may not be bit-exact", threads, wanted
        )
    try:
        out = _replay_steps(model, opt, schedule, batches, first_step, steps, read_at)
    finally:
        if host.set_threads is not None:
            host.set_threads(threads)
    return out


def _replay_steps(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    schedule: Any,
    batches: Any,
    first_step: int,
    steps: int,
    read_at: Sequence[int],
) -> dict[int, dict[str, torch.Tensor]]:
    out = {}
    for t in range(first_step + 1, first_step + steps + 1):
        for group in opt.param_groups:
            group["lr"] = float(schedule(t))
        x, y, _, _ = batches.batch(t)
        loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if t in read_at:
            out[t] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return out


def _d_seed(out_dir: Path, b: Budget, seed: int, t2: int, host: HostSettings | None = None) -> dict[str, Any]:
    base_dir = base_spec(b, seed).run_dir(out_dir)
    base = RecordedRun(base_dir, host=host)
    t1 = t2 - b.pair_offset_steps
    read_at = [s for s in base.steps() if t2 < s <= t2 + b.pair_steps]
    keys = [k for k, v in base.load(t2).items() if v.is_floating_point() and "running_" not in k]
    replay = _replay_from(base_dir, t1, t2, b.pair_steps, read_at, host)
    start_gap = _param_distance(base.load(t1), base.load(t2), keys)
    same_batches = [start_gap] + [_param_distance(replay[s], base.load(s), keys) for s in read_at]
    # Check of the replay itself: from theta_{T2} on the same batches it must reproduce the base run.
    first = read_at[0]
    check = _replay_from(base_dir, t2, t2, first - t2, [first], host)[first]
    replay_error = _param_distance(check, base.load(first), keys) / _param_distance(
        base.load(first), {k: torch.zeros_like(v) for k, v in base.load(first).items()}, keys
    )
    other = RecordedRun(reorder_spec(b, seed, t2).run_dir(out_dir), host=host)
    common_steps = [s for s in read_at if s in set(other.steps())]
    orders = [0.0] + [_param_distance(other.load(s), base.load(s), keys) for s in common_steps]
    return {
        "t1": t1,
        "t2": t2,
        "replay_relative_error": replay_error,
        "same_batches": {"steps": [t2, *read_at], "distance": same_batches},
        "different_orders": {"steps": [t2, *common_steps], "distance": orders},
    }


def d_verdict(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Claim D's verdict: same batches -> the distance shrinks (every seed); different orders -> it grows
    from 0 and levels off (the last third adds < ``D_PLATEAU_FRACTION`` of it, mean over seeds)."""
    ratios, growth_last = [], []
    for r in per_seed.values():
        d = r["same_batches"]["distance"]
        ratios.append(d[-1] / d[0] if d[0] > 0 else float("nan"))
        o = r["different_orders"]["distance"]
        i = int(round(2 * (len(o) - 1) / 3))
        growth_last.append((o[-1] - o[i]) / o[-1] if o[-1] > 0 else float("nan"))
    g = common.mean_std(growth_last)
    checks = {
        "same batches, different starts: distance shrinks (every seed)": all(x < 1 for x in ratios),
        "same start, different orders: distance grows from 0 (every seed)": all(
            r["different_orders"]["distance"][-1] > 0 for r in per_seed.values()
        ),
        f"... and levels off (last third adds < {D_PLATEAU_FRACTION:.0%})": g["mean"] < D_PLATEAU_FRACTION,
    }
    out = common.verdict(checks, "all of: " + "; ".join(checks), n=len(per_seed), required_n=3)
    out["same_batches_end_over_start"] = common.mean_std(ratios)
    out["replay_relative_error_max"] = max(r["replay_relative_error"] for r in per_seed.values())
    out["different_orders_last_third_growth_fraction"] = g
    return out


def run_claim_D(
    out_dir: str | Path,
    *,
    budget: str = "small",
    seeds: Sequence[int] = (0, 1, 2),
    reuse: bool = True,
    jobs: int = 1,
    progress: bool = True,
    host: HostSettings | None = None,
) -> dict[str, Any]:
    """Claim D: distances between two trajectories (see the module docstring for the design).

    Writes ``claim_D.json`` and ``claim_D.png``.
    """
    b, out_dir, window = prepare_base_runs(
        out_dir, budget, seeds, reuse=reuse, jobs=jobs, progress=progress, host=host
    )
    t2 = window.branch_step
    if t2 - b.pair_offset_steps < 0 or t2 + b.pair_steps > window.end_step:
        raise ValueError(
            f"claim D needs checkpoints at {t2 - b.pair_offset_steps} and {t2 + b.pair_steps} steps"
        )
    ensure_runs(
        out_dir, [reorder_spec(b, s, t2) for s in seeds], jobs=jobs, reuse=reuse, progress=progress, host=host
    )
    per_seed = {s: _d_seed(out_dir, b, s, t2, host) for s in seeds}
    doc = {
        "budget": budget,
        "window": window.to_dict(),
        "per_seed": per_seed,
        "verdict": d_verdict(per_seed),
        "config": base_spec(b, seeds[0]).config().to_dict(),
        "protocol": __doc__,
    }
    doc["figures"] = [_plot_d(out_dir, per_seed)]
    return common.write_result(out_dir, "D", doc, seeds)


def _plot_d(out_dir: Path, per_seed: dict[int, dict[str, Any]]) -> str:
    fig, (ax,) = common.new_figure(1, width=6)
    for i, (s, r) in enumerate(per_seed.items()):
        for key, ls, lab in (
            ("same_batches", "-", "same batches, starts T1/T2"),
            ("different_orders", "--", "same start, other order"),
        ):
            xs = np.asarray(r[key]["steps"]) - r["t2"]
            ax.plot(xs, r[key]["distance"], ls=ls, color=f"C{i}", marker=".", label=f"seed {s}: {lab}")
    ax.set_xlabel("steps after T2")
    ax.set_ylabel("|theta - theta'| (parameters)")
    ax.legend(fontsize=7)
    return common.save_figure(fig, out_dir / "claim_D.png")
