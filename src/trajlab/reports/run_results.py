"""What the HTML report reads from a run directory: the file names, :class:`RunResults`, grouping by config.

The file layout is described in :mod:`trajlab.reports.html`. This module only reads and groups (no HTML),
so that the section builders (:mod:`~trajlab.reports.sections`,
:mod:`~trajlab.reports.averaging_sections`) and the page assembly in :mod:`~trajlab.reports.html` all
depend on it rather than on each other. The names are re-exported by :mod:`trajlab.reports.html`, which
is where the demo and the tests look them up.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trajlab import files
from trajlab.train.metrics import read_metrics

ANALYSIS_DIR = "analysis"
LINE_PROBES = "line_probes.jsonl"
LOSS_MATRIX = "loss_matrix.json"
BATCH_MEMORY = "batch_memory.json"
POST_HOC = "post_hoc.json"
THEORY = "theory.json"
PLATEAU = "plateau.json"  # the plateau demo: claims table, ladder, EMAs, two-point gains, theory
ANALYSIS_PROVENANCE = "provenance.json"  # {stage: provenance} of each analysis stage
PROBE_COMMAND_RESULT = "probes/probe.json"  # ``trajlab probe RUN`` (used when the analysis has no probes)
# Config keys that do not change what a run computes: runs differing only in these (and the seed) are
# repetitions of one configuration.
_NOT_CONFIG = (("train", "seed"), ("train", "progress"), ("train", "num_threads"), ("data", "data_dir"))


@dataclass
class RunResults:
    """Everything the report reads from one run directory (None / empty where a file is absent)."""

    path: Path
    label: str
    config: dict[str, Any] | None = None
    provenance: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    probes: list[dict[str, Any]] = field(default_factory=list)
    loss_matrix: dict[str, Any] | None = None
    batch_memory: dict[str, Any] | None = None
    post_hoc: dict[str, Any] | None = None
    theory: dict[str, Any] | None = None
    plateau: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    analysis_provenance: dict[str, Any] | None = None
    files: dict[str, str] = field(default_factory=dict)  # which file each probe result came from

    @property
    def seed(self) -> Any:
        config = self.config or {}
        return config.get("train", {}).get("seed", config.get("seed"))

    def source(self, name: str) -> str:
        """How the report cites a file of this run: ``R1:analysis/post_hoc.json``."""
        return f"{self.label}:{name}"


def _read_json(path: Path, problems: list[str]) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        problems.append(f"{path.name}: unreadable ({e})")
        return None


def _read_jsonl(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            problems.append(f"{path.name}: line {i} is not JSON (skipped)")
    return rows


def _read_run_json(run_dir: Path, name: str, verify: bool) -> Any:
    """A file of the run itself, checked against ``checksums.json``: damage raises, it is not a note."""
    if not (run_dir / name).is_file():
        return None
    data = files.read_verified(run_dir, name, verify=verify)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise files.ChecksumError(
            f"{run_dir / name}: unreadable ({type(e).__name__}); run `trajlab runs verify`"
        ) from None


def load_run(path: str | os.PathLike, label: str, *, verify: bool = True) -> RunResults:
    """Read a run directory's result files (see the module docstring for the layout).

    The run's own files (``config.json`` or ``recipe.json``, provenance, summary, metrics) are checked
    against their checksums (``verify``); a damaged one raises (:class:`trajlab.files.ChecksumError`,
    :class:`trajlab.train.metrics.MetricsDamaged`), while an unreadable analysis file becomes a note.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a directory; give trajlab run directories")
    r = RunResults(path=path, label=label)
    p = r.problems
    r.config = _read_run_json(path, "config.json", verify)
    if r.config is None:
        recipe = _read_run_json(path, "recipe.json", verify)  # a run recorded from the user's own loop
        r.config = None if recipe is None else {"recorded_loop": True, **recipe}
    if r.config is None:
        raise FileNotFoundError(f"{path} is not a trajlab run directory (no config.json or recipe.json)")
    r.provenance = _read_run_json(path, "provenance.json", verify)
    r.summary = _read_run_json(path, "summary.json", verify)
    metrics = path / "metrics.jsonl"
    r.metrics = read_metrics(metrics, verify=verify) if metrics.is_file() else []
    a = path / ANALYSIS_DIR
    r.probes = _read_jsonl(a / LINE_PROBES, p)
    r.loss_matrix = _read_json(a / LOSS_MATRIX, p)
    r.batch_memory = _read_json(a / BATCH_MEMORY, p)
    r.post_hoc = _read_json(a / POST_HOC, p)
    r.theory = _read_json(a / THEORY, p)
    r.plateau = _read_json(a / PLATEAU, p) if (a / PLATEAU).is_file() else None
    r.analysis_provenance = _read_json(a / ANALYSIS_PROVENANCE, p)
    r.files = {
        "probes": f"{ANALYSIS_DIR}/{LINE_PROBES}",
        "matrix": f"{ANALYSIS_DIR}/{LOSS_MATRIX}",
        "memory": f"{ANALYSIS_DIR}/{BATCH_MEMORY}",
    }
    _probe_command_fallback(r)
    return r


def _probe_command_fallback(r: RunResults) -> None:
    """Take what ``trajlab probe RUN`` wrote (``RUN/probes/probe.json``) where the analysis has nothing."""
    doc = _read_json(r.path / PROBE_COMMAND_RESULT, r.problems)
    if not isinstance(doc, dict) or doc.get("kind") != "trajlab.probe":
        return
    if not r.probes and doc.get("line"):
        r.probes, r.files["probes"] = list(doc["line"]), PROBE_COMMAND_RESULT
    matrices = doc.get("matrix") or {}
    first = matrices.get("batch") or next(iter(matrices.values()), None)
    if isinstance(first, dict) and r.loss_matrix is None and r.batch_memory is None:
        r.loss_matrix, r.batch_memory = first.get("matrix"), first.get("memory")
        r.files["matrix"] = r.files["memory"] = PROBE_COMMAND_RESULT


def config_key(config: dict[str, Any]) -> str:
    """The config with seed-like keys removed, as canonical JSON: equal keys = repetitions of a run."""
    c = json.loads(json.dumps(config))
    for section, key in _NOT_CONFIG:
        c.get(section, {}).pop(key, None)
    return json.dumps(c, sort_keys=True)


def _final_eval(r: RunResults) -> dict[str, Any]:
    evals = [row for row in r.metrics if row.get("kind") == "eval"]
    if evals:
        return evals[-1]
    return dict((r.summary or {}).get("final") or {})


def _groups(runs: Sequence[RunResults]) -> list[tuple[str, list[RunResults]]]:
    """Runs grouped by :func:`config_key` (repetitions over seeds), in order of first appearance."""
    groups: dict[str, list[RunResults]] = {}
    for r in runs:
        groups.setdefault(config_key(r.config or {}), []).append(r)
    out = []
    for members in groups.values():
        labels = ", ".join(m.label for m in members)
        preset = (members[0].config or {}).get("preset") or "custom config"
        out.append((f"{preset} ({labels})", members))
    return out
