"""``trajlab demo``: the README's main command.

Trains ``fashion-resnet20`` on a short budget and says where everything is. (The full demo, with
recording, averaging, probes and the report, builds on the same entry point.)
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trajlab.config import resolve_config
from trajlab.experiments.runner import run_training

BUDGETS = {
    # tiny: a smoke run for tests (seconds); default: a few minutes on 2 CPU cores.
    "tiny": ["data.train_subset=512", "data.test_subset=500", "train.steps=8", "train.eval_every_steps=8"],
    "default": ["data.train_subset=8192", "train.epochs=3", "train.eval_every_steps=64"],
}


@dataclass
class DemoResult:
    out_dir: Path
    rows: list[tuple[str, str]] = field(default_factory=list)

    def summary_text(self) -> str:
        width = max(len(k) for k, _ in self.rows)
        lines = [f"{k:<{width}}  {v}" for k, v in self.rows]
        return "\n".join(["trajlab demo", *lines, f"outputs: {self.out_dir.resolve()}"])


def run_demo(
    out: str | Path,
    *,
    data_dir: str | None = None,
    budget: str = "default",
    command: list[str] | None = None,
    fresh: bool = False,
) -> DemoResult:
    out = Path(out)
    if fresh and out.exists():
        shutil.rmtree(out)
    overrides = list(BUDGETS[budget])
    if data_dir:
        overrides.append(f'data.data_dir="{data_dir}"')
    cfg = resolve_config("fashion-resnet20", None, overrides)
    run_dir = out / "train"
    if (run_dir / "summary.json").is_file():
        from trajlab.experiments.runner import load_run_config

        if load_run_config(run_dir).to_dict() == cfg.to_dict():
            import json

            final: dict[str, Any] = json.loads((run_dir / "summary.json").read_text())["final"]
            return _result(out, run_dir, final, reused=True)
        shutil.rmtree(run_dir)
    elif run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted demo run: start it again
    outcome = run_training(cfg, run_dir, command=command)
    return _result(out, run_dir, outcome.result.final_metrics, reused=False)


def _result(out: Path, run_dir: Path, final: dict[str, Any], *, reused: bool) -> DemoResult:
    res = DemoResult(out_dir=out)
    res.rows.append(("run", f"{run_dir}{' (reused)' if reused else ''}"))
    res.rows.append(("test accuracy", f"{final.get('test_acc', float('nan')):.4f}"))
    res.rows.append(("test loss", f"{final.get('test_loss', float('nan')):.4f}"))
    res.rows.append(("metrics", str(run_dir / "metrics.jsonl")))
    return res
