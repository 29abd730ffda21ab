"""Cost of one online averaging update, side by side, on ResNet-50-sized parameters (CPU).

Every contender updates its own average of the same parameter tensors (the 161 tensors of torchvision's
ResNet-50, 25,557,032 weights, built here from the architecture's shapes so torchvision is not needed).
Contenders run round-robin in one process, so drift in machine load hits all of them alike; each figure
is the median over repeats, and the results are ratios to the floor, a bare ``torch._foreach_lerp_``.

Usage: ``python benchmarks/bench_averaging.py [--repeats 15] [--threads 1] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from trajlab.averaging import EMA, AveragedWeights, cpu_kernel


def resnet50_shapes() -> list[tuple[int, ...]]:
    """Parameter shapes of torchvision's resnet50 (stem, 4 stages of bottlenecks, fc)."""
    shapes: list[tuple[int, ...]] = [(64, 3, 7, 7), (64,), (64,)]
    cin = 64
    for width, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3)):
        for b in range(blocks):
            cout = 4 * width
            shapes += [(width, cin, 1, 1), (width,), (width,), (width, width, 3, 3), (width,), (width,)]
            shapes += [(cout, width, 1, 1), (cout,), (cout,)]
            if b == 0:
                shapes += [(cout, cin, 1, 1), (cout,), (cout,)]
            cin = cout
    return shapes + [(1000, 2048), (1000,)]


class Weights(nn.Module):
    """A module holding only the parameters (the forward pass is irrelevant to the update cost)."""

    def __init__(self, shapes: list[tuple[int, ...]]) -> None:
        super().__init__()
        self.params = nn.ParameterList([nn.Parameter(torch.randn(s) * 0.05) for s in shapes])


def machine() -> dict[str, object]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        sha = ""
    return {
        "cpu": cpu,
        "logical_cores": torch.multiprocessing.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git_sha": sha or "unknown",
    }


def contenders(model: Weights) -> dict[str, Callable[[], None]]:
    params = [p.detach() for p in model.parameters()]
    floor_avg = [p.clone() for p in params]
    one = AveragedWeights(model, EMA(0.999))
    four_rules = [EMA(0.99), EMA(0.999), EMA(0.9999), EMA(half_life_steps=2000)]
    four = AveragedWeights(model, four_rules)
    four_torch = AveragedWeights(model, four_rules, cpu_kernel=False)
    am_ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.999))
    am_default = AveragedModel(model)
    steps = {"one": 0, "four": 0, "four_torch": 0}

    def ours_one() -> None:
        steps["one"] += 1
        one.update(steps["one"])

    def ours_four() -> None:
        steps["four"] += 1
        four.update(steps["four"])

    def ours_four_torch() -> None:
        steps["four_torch"] += 1
        four_torch.update(steps["four_torch"])

    out = {
        "foreach_lerp_floor": lambda: torch._foreach_lerp_(floor_avg, params, 0.001),
        "trajlab_ema": ours_one,
        "trajlab_four_emas": ours_four,
        "trajlab_four_emas_torch_ops": ours_four_torch,
        "averaged_model_ema_multi_avg_fn": lambda: am_ema.update_parameters(model),
        "averaged_model_default": lambda: am_default.update_parameters(model),
    }
    try:
        from ema_pytorch import EMA as LucidEMA
    except ImportError:
        return out
    lucid = LucidEMA(model, beta=0.999, update_after_step=0, update_every=1, include_online_model=False)
    lucid_fe = LucidEMA(
        model, beta=0.999, update_after_step=0, update_every=1, include_online_model=False, use_foreach=True
    )
    out["ema_pytorch_update"] = lucid.update
    out["ema_pytorch_update_foreach"] = lucid_fe.update
    return out


def storage_bytes(avg: AveragedWeights) -> int:
    seen, total = set(), 0
    for st in avg._states.values():
        tensors = (
            list(st.average) + list(st.compensation or []) if hasattr(st, "average") else sum(st.slots, [])
        )
        for t in tensors:
            key = t.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1: least noisy on shared CPUs)"
    )
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "averaging.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Weights(resnet50_shapes())
    n_weights = sum(p.numel() for p in model.parameters())
    fns = contenders(model)
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for rep in range(args.warmup + args.repeats):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                if rep >= args.warmup:
                    times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    floor, ours = med["foreach_lerp_floor"], med["trajlab_ema"]
    model_bytes = n_weights * 4
    one_bytes = storage_bytes(AveragedWeights(model, EMA(0.999)))
    four_bytes = storage_bytes(
        AveragedWeights(model, [EMA(0.99), EMA(0.999), EMA(0.9999), EMA(half_life_steps=2000)])
    )
    result = {
        "benchmark": "averaging update, ResNet-50 parameter shapes, CPU",
        "n_weights": n_weights,
        "n_tensors": len(list(model.parameters())),
        "repeats": args.repeats,
        "machine": machine(),
        "median_seconds": med,
        "ratios": {
            "trajlab_ema / foreach_lerp_floor (target <= 1.1)": ours / floor,
            "trajlab_ema / averaged_model_ema_multi_avg_fn (target <= 1)": ours
            / med["averaged_model_ema_multi_avg_fn"],
            "trajlab_ema / averaged_model_default (target < 1)": ours / med["averaged_model_default"],
            "trajlab_four_emas / trajlab_ema (target <= 3)": med["trajlab_four_emas"] / ours,
            "trajlab_four_emas torch ops only / trajlab_ema": med["trajlab_four_emas_torch_ops"] / ours,
        },
        "fused_cpu_kernel_used": cpu_kernel.load() is not None,
        "memory": {
            "one_ema_storage / fp32_model (target 1)": one_bytes / model_bytes,
            "four_emas_storage / fp32_model (target 4)": four_bytes / model_bytes,
        },
    }
    if "ema_pytorch_update" in med:
        import ema_pytorch

        result["machine"]["ema_pytorch"] = getattr(ema_pytorch, "__version__", "0.8.3")
        result["ratios"]["trajlab_ema / ema_pytorch_update (target < 1)"] = ours / med["ema_pytorch_update"]
        result["ratios"]["trajlab_ema / ema_pytorch_update_foreach"] = (
            ours / med["ema_pytorch_update_foreach"]
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
