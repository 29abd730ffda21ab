"""The run cache shared by the claim drivers: a run is described by a :class:`RunSpec` (a preset, overrides
and optionally a branch source) and lives in ``ROOT/runs/<name>-<key>/``, where ``key`` hashes the fully
resolved config (minus settings that cannot change the numbers: progress bars, threads, device) and the
branch source's own key and step. A complete run (``summary.json``) is reused, an interrupted one resumed
from its last checkpoint, anything else retrained.

Several runs can be trained side by side (``jobs`` processes, one torch thread each); runs that branch
from another wait for it (:func:`ensure_runs` trains in dependency waves).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trajlab.config import HostSettings, RunConfig, resolve_config

log = logging.getLogger(__name__)

# Settings that do not change a run's numbers: excluded from the cache key.
_VOLATILE = {"train": ("progress", "num_threads", "device", "tensorboard")}


@dataclass(frozen=True)
class RunSpec:
    """One training run of a claim experiment.

    Attributes:
        name: a readable label (``base-s0``, ``lr_half-s1``); the directory adds the config hash.
        preset: the preset the config starts from.
        overrides: ``section.key=value`` overrides applied after the preset.
        branch_from: ``(source spec, step)``: start from the source run's checkpoint at ``step``.
    """

    name: str
    preset: str
    overrides: tuple[str, ...] = ()
    branch_from: tuple[RunSpec, int] | None = field(default=None)

    def config(self) -> RunConfig:
        """The resolved :class:`RunConfig` (preset, then overrides)."""
        return resolve_config(self.preset, None, list(self.overrides))

    def key(self) -> str:
        """12 hex digits of SHA-256 over the resolved config and the branch source (key, step)."""
        cfg = self.config().to_dict()
        for section, names in _VOLATILE.items():
            for name in names:
                cfg[section].pop(name, None)
        cfg.pop("preset", None)
        src = None if self.branch_from is None else [self.branch_from[0].key(), int(self.branch_from[1])]
        text = json.dumps({"config": cfg, "branch_from": src}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def run_dir(self, root: str | Path) -> Path:
        """Where this run lives under the claims output directory ``root``."""
        return Path(root) / "runs" / f"{self.name}-{self.key()}"


def is_complete(run_dir: Path) -> bool:
    """A run is complete once its ``summary.json`` exists (written last by the runner)."""
    return (run_dir / "summary.json").is_file()


def ensure_run(
    root: str | Path,
    spec: RunSpec,
    *,
    reuse: bool = True,
    progress: bool = False,
    host: HostSettings | None = None,
) -> Path:
    """Train ``spec`` into its cache directory unless a complete copy exists; return the directory.

    Args:
        root: the claims output directory.
        spec: the run.
        reuse: reuse a complete run (False: train it again from scratch; a branch's source is always
            reused when complete).
        progress: show the training progress bar.
        host: where else to look for data, the thread count (:class:`~trajlab.config.HostSettings`).

    Returns:
        The run directory (complete).
    """
    from trajlab.runs.runner import run_training
    from trajlab.trajectory import list_checkpoints

    run_dir = spec.run_dir(root)
    if reuse and is_complete(run_dir):
        return run_dir
    cfg = resolve_config(spec.preset, None, [*spec.overrides, f"train.progress={str(progress).lower()}"])
    if run_dir.exists() and reuse and list_checkpoints(run_dir) and (run_dir / "config.json").is_file():
        log.info("resuming %s", run_dir)
        run_training(None, run_dir, resume=True, host=host)
        return run_dir
    if run_dir.exists():
        shutil.rmtree(run_dir)
    branch = None
    if spec.branch_from is not None:
        src_spec, step = spec.branch_from
        # The source is reused even with reuse=False: retraining it is the caller's decision (it is
        # retrained once when it is in the same ensure_runs call, in an earlier wave).
        branch = (ensure_run(root, src_spec, reuse=True, progress=progress, host=host), int(step))
    log.info("training %s", run_dir)
    command = ["trajlab", "reproduce", f"(run {spec.name})"]
    run_training(cfg, run_dir, branch_from=branch, command=command, host=host)
    return run_dir


def _worker(root: str, spec: RunSpec, reuse: bool, host: HostSettings) -> str:
    # One torch thread per worker process (set through the host, as the library sets none itself); the run's
    # own train.num_threads then applies, not the parent's TRAJLAB_NUM_THREADS.
    host.apply_threads(1)
    logging.basicConfig(level=logging.WARNING)
    return str(
        ensure_run(root, spec, reuse=reuse, progress=False, host=dataclasses.replace(host, num_threads=0))
    )


def ensure_runs(
    root: str | Path,
    specs: Sequence[RunSpec],
    *,
    jobs: int = 1,
    reuse: bool = True,
    progress: bool = True,
    spawn: bool = False,
    host: HostSettings | None = None,
) -> dict[str, Path]:
    """Make sure every run in ``specs`` exists, training up to ``jobs`` of them at a time.

    Runs are trained in waves: a branch waits for its source. With ``jobs`` = 1 everything runs in this
    process (with per-run progress bars) unless ``spawn``; otherwise in spawned worker processes, one
    torch thread each (when ``host.set_threads`` is given, as the CLI does), and a bar counts finished
    runs.

    Returns:
        ``{spec.name: run directory}``.
    """
    from tqdm.auto import tqdm

    host = host or HostSettings()
    todo = {s.name: s for s in specs}
    done: dict[str, Path] = {}
    for name, s in list(todo.items()):
        if reuse and is_complete(s.run_dir(root)):
            done[name] = s.run_dir(root)
            del todo[name]
    bar = tqdm(total=len(specs), initial=len(done), desc="claim runs", unit="run", disable=not progress)
    try:
        while todo:
            wave = [
                s
                for s in todo.values()
                if s.branch_from is None or is_complete(s.branch_from[0].run_dir(root))
            ]
            if not wave:  # a source outside ``specs``: ensure_run trains it first
                wave = list(todo.values())
            if not spawn and (jobs <= 1 or len(wave) == 1):
                for s in wave:
                    done[s.name] = ensure_run(root, s, reuse=reuse, progress=progress, host=host)
                    bar.update(1)
            else:
                done.update(_parallel(root, wave, max(jobs, 1), reuse, bar, host))
            for s in wave:
                todo.pop(s.name, None)
    finally:
        bar.close()
    return done


def _parallel(
    root: str | Path, wave: list[RunSpec], jobs: int, reuse: bool, bar: Any, host: HostSettings
) -> dict[str, Path]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    out: dict[str, Path] = {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_worker, str(root), s, reuse, host): s for s in wave}
        for fut in as_completed(futures):
            out[futures[fut].name] = Path(fut.result())
            bar.update(1)
    return out
