"""Hessian spectrum probes against PyHessian 0.1, side by side; writes benchmarks/results/spectrum.json.

Setup: ResNet-20 (CIFAR stem, 3x32x32, 10 classes) trained ``--train-steps`` SGD steps on trajlab's
synthetic task (so BN running statistics are real), one batch of 128, float32 on CPU, ``--threads``
threads. PyHessian forces eval-mode BatchNorm, so the comparison uses ``bn="running"``. Every time is
also given as a multiple of one forward+backward of the plain model on the batch (timed in each repeat).

* top-1 eigenvalue: ``top_eigenvalues(k=1)`` (Lanczos, residual <= 1e-3 |lambda|) vs PyHessian's
  ``hessian(...).eigenvalues(top_n=1)`` (power iteration, stops when two estimates differ by < 1e-3).
* trace: ``hessian_trace`` with half of PyHessian's maximum budget (10 deflation steps + 40 samples =
  50 HVPs) vs PyHessian's ``trace()`` (stops when the running mean moves by < 1e-3, possibly after 2
  samples, at most 100 HVPs). On this Hessian one plain Hutchinson sample has a standard deviation of
  ~1.5x the trace (the outliers carry ||H||_F), so neither reaches 2% at this budget: both are compared
  with a long deflated run (``--reference-rtol``), and PyHessian's standard error is computed from the
  samples it returns.
* density: ``spectral_density`` (80 Lanczos steps); PyHessian's ``density()`` is called to record
  whether it runs (it calls ``torch.eig``, removed in torch 2.x).

PyHessian's HVPs are counted by wrapping its ``hessian_vector_product``. Without ``pyhessian`` installed
the comparison is skipped with a message and trajlab's side is still measured. PyHessian pins nothing
usable for this torch; install it apart from the project, e.g.::

    python3 -m venv .venv-bench && .venv-bench/bin/pip install torch==2.13.0 numpy
    .venv-bench/bin/pip install --no-deps pyhessian==0.1
    PYTHONPATH=src .venv-bench/bin/python benchmarks/bench_spectrum.py

Usage: ``python benchmarks/bench_spectrum.py [--repeats 3] [--threads 1] [--out PATH]``
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import logging
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from trajlab.data.synthetic import SyntheticSpec, make_synthetic
from trajlab.models import build_model
from trajlab.probes import hessian_trace, spectral_density, top_eigenvalues

logger = logging.getLogger("bench_spectrum")


def _trained_model(steps: int) -> tuple[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """ResNet-20 after ``steps`` SGD steps (lr 0.05, momentum 0.9) on the synthetic task; a fixed batch."""
    torch.manual_seed(0)
    x_all, y_all = make_synthetic(SyntheticSpec(n=2048, channels=3, seed=0), "train")
    x_all = (x_all.float() / 255 - 0.5) / 0.25
    model = build_model("resnet20", num_classes=10, in_channels=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(y_all), (128,), generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        F.cross_entropy(model(x_all[idx]), y_all[idx]).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval(), (x_all[:128], y_all[:128])


def _forward_backward_s(model: torch.nn.Module, batch) -> float:
    ref = copy.deepcopy(model).eval()
    start = time.perf_counter()
    F.cross_entropy(ref(batch[0]), batch[1]).backward()
    return time.perf_counter() - start


def _pyhessian():
    """The pyhessian module with an HVP counter, or None (with the reason logged) when absent."""
    try:  # the module, not the class pyhessian/__init__.py re-exports under the same name
        ph = importlib.import_module("pyhessian.hessian")
    except ImportError as err:
        logger.warning("pyhessian is not installed (%s): skipping the comparison (see the docstring)", err)
        return None
    if not hasattr(ph, "_trajlab_count"):
        original = ph.hessian_vector_product
        ph._trajlab_count = [0]

        def counted(gradsH, params, v):  # noqa: N803 - PyHessian's argument names
            ph._trajlab_count[0] += 1
            return original(gradsH, params, v)

        ph.hessian_vector_product = counted
    return ph


def _run_pyhessian(ph, model, batch, what: str, seed: int) -> dict:
    torch.manual_seed(seed)  # PyHessian has no seed argument: its vectors come from the global RNG
    work = copy.deepcopy(model)
    ph._trajlab_count[0] = 0
    start = time.perf_counter()
    h = ph.hessian(work, F.cross_entropy, data=batch, cuda=False)
    if what == "top1":
        values, _ = h.eigenvalues(top_n=1)
        value = float(values[0])
        return {"value": value, "time_s": time.perf_counter() - start, "hvps": ph._trajlab_count[0]}
    samples = h.trace()
    elapsed = time.perf_counter() - start
    mean = statistics.fmean(samples)
    se = statistics.stdev(samples) / len(samples) ** 0.5 if len(samples) > 1 else float("inf")
    return {"value": mean, "time_s": elapsed, "hvps": ph._trajlab_count[0], "rel_std_error": se / abs(mean)}


# trajlab's settings per measurement: the defaults, and one cheaper setting each.
TRAJLAB_RUNS = {
    "top1": {"trajlab": {}, "trajlab_tol_1e-2": {"tol": 1e-2}},
    "trace": {
        "trajlab": {"deflation_steps": 10, "max_samples": 40},  # 50 HVPs: half PyHessian's maximum
        "trajlab_30_hvps": {"deflation_steps": 10, "max_samples": 20},
    },
}


def _run_trajlab(model, batch, what: str, seed: int, options: dict) -> dict:
    if what == "top1":
        r = top_eigenvalues(model, F.cross_entropy, batch, k=1, bn="running", seed=seed, **options)
        return {
            "value": r.eigenvalues[0],
            "time_s": r.wall_time_s,
            "hvps": r.hvps,
            "residual": r.residuals[0],
        }
    r = hessian_trace(model, F.cross_entropy, batch, bn="running", seed=seed, **options)
    return {"value": r.trace, "time_s": r.wall_time_s, "hvps": r.hvps, "rel_std_error": r.rel_std_error}


def _compare(model, batch, ph, repeats: int, reference: dict) -> dict:
    """Alternate trajlab and PyHessian per repeat; medians of values, times (/ fwd+bwd) and HVP counts."""
    out = {}
    for what in ("top1", "trace"):
        rows = []
        for r in range(repeats):
            fb = _forward_backward_s(model, batch)
            row = {"forward_backward_s": fb}
            for name, options in TRAJLAB_RUNS[what].items():
                row[name] = _run_trajlab(model, batch, what, r, options)
            if ph is not None:
                row["pyhessian"] = _run_pyhessian(ph, model, batch, what, seed=r)
            rows.append(row)
            logger.info("%s repeat %d: %s", what, r, row)
        out[what] = _summary(rows, reference[what])
    return out


def _summary(rows: list[dict], ref: float) -> dict:
    def med(side: str, key: str) -> float:
        return statistics.median(row[side][key] for row in rows)

    sides = [s for s in rows[0] if s != "forward_backward_s"]
    summary = {"reference": ref, "runs": rows}
    for side in sides:
        summary[side] = {
            "value_median": med(side, "value"),
            "rel_err_vs_reference_max": max(abs(row[side]["value"] / ref - 1) for row in rows),
            "hvps_median": med(side, "hvps"),
            "hvps_range": [min(row[side]["hvps"] for row in rows), max(row[side]["hvps"] for row in rows)],
            "time_s_median": med(side, "time_s"),
            "time_over_forward_backward_median": statistics.median(
                row[side]["time_s"] / row["forward_backward_s"] for row in rows
            ),
        }
    for side in sides if "pyhessian" in sides else []:
        if side == "pyhessian":
            continue
        summary[side]["agreement_with_pyhessian_rel_max"] = max(
            abs(row[side]["value"] / row["pyhessian"]["value"] - 1) for row in rows
        )
        summary[side]["time_over_pyhessian_median"] = statistics.median(
            row[side]["time_s"] / row["pyhessian"]["time_s"] for row in rows
        )
        summary[side]["time_over_pyhessian_max"] = max(
            row[side]["time_s"] / row["pyhessian"]["time_s"] for row in rows
        )
    return summary


def _references(model, batch, rtol: float) -> dict:
    top = top_eigenvalues(model, F.cross_entropy, batch, k=1, bn="running", tol=1e-6, max_iter=300, seed=99)
    tr = hessian_trace(
        model, F.cross_entropy, batch, bn="running", rtol=rtol, max_samples=800, deflation_steps=20, seed=99
    )
    logger.info(
        "reference: top-1 %s (residual %.2e), trace %s +- %s",
        top.eigenvalues,
        top.residuals[0],
        tr.trace,
        tr.std_error,
    )
    return {
        "top1": top.eigenvalues[0],
        "trace": tr.trace,
        "top1_residual": top.residuals[0],
        "trace_std_error": tr.std_error,
        "trace_samples": tr.samples,
        "trace_hvps": tr.hvps,
        "trace_time_s": tr.wall_time_s,
    }


def _density(model, batch, ph) -> dict:
    d = spectral_density(model, F.cross_entropy, batch, bn="running")
    out = {"trajlab": {"time_s": d.wall_time_s, "hvps": d.hvps, "trace_estimate": d.trace_estimate,
                       "largest_node": float(max(x.max() for x in d.nodes))}}  # fmt: skip
    if ph is not None:
        try:
            ph.hessian(copy.deepcopy(model), F.cross_entropy, data=batch, cuda=False).density(iter=5)
            out["pyhessian"] = "ran"
        except Exception as err:  # noqa: BLE001 - record whatever it raises
            out["pyhessian"] = f"{type(err).__name__}: {err}"
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
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--reference-rtol", type=float, default=0.02)
    parser.add_argument(
        "--reference-from", metavar="JSON", help="reuse the reference of an earlier output (same setup)"
    )
    parser.add_argument("--out", default="benchmarks/results/spectrum.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    model, batch = _trained_model(args.train_steps)
    ph = _pyhessian()
    if args.reference_from:
        reference = json.loads(Path(args.reference_from).read_text())["reference"]
    else:
        reference = _references(model, batch, args.reference_rtol)
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "threads": args.threads,
        },
        "torch": torch.__version__,
        "pyhessian": None if ph is None else "0.1",
        "git_sha": _git_sha(),
        "repeats": args.repeats,
        "setup": f"resnet20 3x32x32, {args.train_steps} SGD steps on synthetic data, batch 128, float32 CPU, "
        "bn=running (PyHessian's eval mode)",
        "reference": reference,
        "comparison": _compare(model, batch, ph, args.repeats, reference),
        "density": _density(model, batch, ph),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
