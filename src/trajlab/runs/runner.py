"""Build a run from a config and train it into a run directory (the glue between config and engine).

Run directory::

    RUN/config.json        the fully resolved RunConfig
    RUN/provenance.json    git revision and dirty flag, versions, device, seed, command line (+ resumes)
    RUN/metrics.jsonl      train and eval rows (see trajlab.train.metrics)
    RUN/summary.json       written when the run completes: final metrics, steps, wall time
    RUN/trajectory/, RUN/checkpoints/   when recording is enabled (trajlab.trajectory)

Everything that can fail on bad input (config, data, model) is checked before anything is written.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trajlab import files
from trajlab.config import ConfigError, HostSettings, RunConfig
from trajlab.files import ChecksumError, read_verified, write_run_json
from trajlab.provenance import provenance
from trajlab.runs import build
from trajlab.train import distributed
from trajlab.train.engine import Trainer, TrainResult
from trajlab.train.evaluate import evaluate_model
from trajlab.train.metrics import (
    MetricsLog,
    read_metrics,
    tensorboard_installed,
)
from trajlab.trajectory.errors import DamageError
from trajlab.trajectory.quarantine import set_aside_metrics

log = logging.getLogger(__name__)


class RunDirError(ValueError):
    """The output directory cannot be used as asked (holds another run, no checkpoint to resume...)."""


@dataclass
class RunOutcome:
    run_dir: Path
    result: TrainResult
    config: RunConfig


def load_run_config(run_dir: str | os.PathLike, *, verify: bool = True) -> RunConfig:
    """The run's ``config.json``, checked against ``checksums.json`` (unless ``verify=False``).

    Raises:
        RunDirError: not a run directory, or the file is not JSON / not UTF-8.
        DamageError: the file differs from its recorded sha256.
    """
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        if Path(run_dir).is_dir() and "config.json" in _listed(run_dir):
            raise DamageError(f"{path}: missing (listed in checksums.json); run `trajlab runs verify`")
        raise RunDirError(f"{run_dir} is not a trajlab run directory (no config.json)")
    try:
        data = read_verified(run_dir, "config.json", verify=verify)
        raw = json.loads(data.decode("utf-8"))
    except ChecksumError as e:
        raise DamageError(str(e)) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        where = getattr(e, "pos", getattr(e, "start", "?"))
        raise DamageError(
            f"{path}: not a readable config ({type(e).__name__} at byte {where}); run `trajlab runs verify`"
        ) from None
    except OSError as e:
        raise RunDirError(f"{path}: cannot read ({e.strerror or e})") from None
    return RunConfig.from_dict(raw, source=str(path))


def check_out_dir(out_dir: Path, cfg: RunConfig) -> None:
    """Refuse a directory that already holds files or could not be created, naming what to do instead."""
    try:
        files.check_can_create(out_dir)
    except files.UnsafePathError as e:
        raise RunDirError(f"--out: {e.strerror}") from None
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise RunDirError(f"--out {out_dir} exists and is not a directory; choose another --out")
    if not any(out_dir.iterdir()):
        return
    cfg_path = out_dir / "config.json"
    if not cfg_path.is_file():
        raise RunDirError(
            f"--out {out_dir} is not empty and is not a trajlab run; choose an empty or new directory"
        )
    try:
        existing = json.loads(cfg_path.read_text())
    except json.JSONDecodeError:
        existing = None
    if existing == cfg.to_dict():
        raise RunDirError(
            f"--out {out_dir} already holds this run; use `trajlab train --resume {out_dir}` to continue it, "
            "or choose another --out"
        )
    raise RunDirError(
        f"--out {out_dir} already holds a different run; choose another --out (nothing was written)"
    )


def _make_callbacks(
    cfg: RunConfig,
    run_dir: Path,
    model: torch.nn.Module,
    batches: build.DatasetBatches,
    extra: Sequence[Any],
    host: HostSettings,
) -> list[Any]:
    callbacks: list[Any] = []
    if cfg.record.enabled:
        from trajlab.trajectory import Recorder, SnapshotSchedule

        callbacks.append(
            Recorder(
                run_dir,
                SnapshotSchedule.from_dict(cfg.record.snapshots),
                dtype=getattr(torch, cfg.record.dtype),
                queue_size=cfg.record.queue_size,
            )
        )
    if cfg.averaging.enabled:
        from trajlab.runs.plugins import LiveRecalibrated, averaging_callback

        callbacks.append(averaging_callback(cfg, model, host))
        if cfg.averaging.eval_bn == "recalibrate":
            callbacks.append(LiveRecalibrated(cfg.averaging.bn_batches))
    if cfg.probes.every_steps > 0:
        from trajlab.runs.plugins import probe_callback

        callbacks.append(probe_callback(cfg, run_dir, batches, host))
    callbacks.extend(extra)
    if cfg.record.checkpoint_every_steps > 0:
        from trajlab.trajectory import Checkpointer

        # Last: a checkpoint at step t holds every other callback's state after step t.
        callbacks.append(
            Checkpointer(run_dir, cfg.record.checkpoint_every_steps, keep=cfg.record.keep_checkpoints)
        )
    return callbacks


def run_training(
    cfg: RunConfig | None,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    command: list[str] | None = None,
    extra_callbacks: Sequence[Any] = (),
    branch_from: tuple[str | os.PathLike, int] | None = None,
    host: HostSettings | None = None,
) -> RunOutcome:
    """Train the run described by ``cfg`` into ``out_dir`` (or continue it with ``resume=True``).

    ``branch_from=(run_dir, step)`` starts a new run from another run's training checkpoint at ``step``
    (model, optimizer state, RNG): with the same ``train.seed`` it is fed exactly the batches the source
    run saw after ``step``, so two branches differ only by what ``cfg`` changes (e.g. the schedule).

    ``host`` (:class:`~trajlab.config.HostSettings`): where else to look for data, the thread count (set
    only when ``host.set_threads`` is given: the library itself never changes it) and the CPU kernel.
    """
    host = host or HostSettings()
    out_dir = Path(out_dir)
    state = None
    restart = False
    branch_state = None
    if resume:
        saved = load_run_config(out_dir)
        if cfg is not None and cfg.to_dict() != saved.to_dict():
            raise RunDirError(
                f"--resume {out_dir}: the given config differs from the run's config.json; drop it"
            )
        cfg = saved
        from trajlab.trajectory.quarantine import resume_state

        if (out_dir / "summary.json").is_file():
            raise RunDirError(f"{out_dir} is already complete (summary.json); nothing to resume")
        # The newest checkpoint that verifies within the intact batch log; none at all: start again from
        # step 0 (a run killed before its first checkpoint), setting aside what was written.
        state = resume_state(out_dir, needs_batch_log=cfg.record.enabled)
        restart = state is None
    elif cfg is None:
        raise ConfigError("no config given")
    else:
        # Only rank 0 writes the run directory, so only rank 0 checks it: another rank checking later could
        # find rank 0's fresh config.json and refuse the run it belongs to.
        if _dist_info(host).rank == 0:
            check_out_dir(out_dir, cfg)
        if branch_from is not None:
            from trajlab.trajectory import load_checkpoint

            src_dir, src_step = Path(branch_from[0]), int(branch_from[1])
            ckpt = src_dir / "checkpoints" / f"ckpt_{src_step:09d}.pt"
            if not ckpt.is_file():
                raise RunDirError(
                    f"cannot branch: {ckpt} does not exist (is step {src_step} a checkpoint step?)"
                )
            branch_state = load_checkpoint(ckpt)

    info = _dist_info(host)
    device = build.resolve_device(cfg.train.device)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    host.apply_threads(cfg.train.num_threads)

    # Everything that can fail on bad input happens before the first write.
    if cfg.record.enabled:
        from trajlab.trajectory import SnapshotSchedule

        try:
            SnapshotSchedule.from_dict(cfg.record.snapshots)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"record.snapshots: {e}") from None
    train_ds = build.build_train_data(cfg, host.data_dirs)
    test_ds = build.build_test_data(cfg, host.data_dirs)
    torch.manual_seed(cfg.train.seed)
    model = build.build_model_for(cfg, train_ds).to(device)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    total_steps = build.total_steps_for(cfg, len(train_ds))
    batches = build.DatasetBatches(
        train_ds,
        cfg.data,
        batch_size=cfg.train.batch_size,
        seed=cfg.train.seed,
        device=device,
        channels_last=cfg.model.channels_last,
        rank=info.rank,
        world_size=info.world_size,
    )

    created_group = distributed.init_process_group(info, device)
    try:
        train_model = distributed.wrap_ddp(model, info, device, sync_bn=cfg.train.sync_bn)
        model = getattr(train_model, "module", model)
        optimizer = build.build_optimizer_for(cfg, model)
        autocast = torch.bfloat16 if (device.type == "cuda" and cfg.train.bf16_autocast) else None

        def eval_batches():  # noqa: ANN202
            return build.iterate_eval(
                test_ds, cfg.train.eval_batch_size, device=device, channels_last=cfg.model.channels_last
            )

        def evaluate(m: torch.nn.Module) -> dict[str, float]:
            return evaluate_model(m, eval_batches, autocast_dtype=autocast, device_type=device.type)

        if info.rank == 0:
            out_dir.mkdir(parents=True, exist_ok=True)
            resumed_at = int(state["step"]) if state else 0 if restart else None
            _write_run_files(out_dir, cfg, device, command, resumed_at=resumed_at)
            if branch_from is not None:
                write_run_json(
                    out_dir,
                    "branch.json",
                    {"source_run": str(branch_from[0]), "source_step": int(branch_from[1])},
                )
            if resumed_at is not None:
                set_aside_metrics(out_dir, resumed_at)
        callbacks = _make_callbacks(cfg, out_dir, model, batches, extra_callbacks, host)
        sink = None
        if info.rank == 0:
            tb_dir = out_dir / "tensorboard" if cfg.train.tensorboard and tensorboard_installed() else None
            sink = MetricsLog(out_dir / "metrics.jsonl", tensorboard_dir=tb_dir)
        trainer = Trainer(
            model,
            optimizer,
            build.build_schedule_for(cfg, total_steps),
            batches,
            evaluate,
            total_steps=total_steps,
            eval_every_steps=cfg.train.eval_every_steps,
            log_every_steps=cfg.train.log_every_steps,
            callbacks=callbacks,
            metrics_sink=sink,
            train_model=train_model,
            device=device,
            autocast_dtype=autocast,
            rank=info.rank,
            world_size=info.world_size,
            progress=cfg.train.progress,
            reduce_loss=distributed.mean_over_ranks if info.enabled else None,
        )
        if branch_state is not None:
            trainer.load_state_dict(branch_state, branch=True)
            log.info("branching from %s at step %d", branch_from[0], trainer.step)
        if state is not None:
            trainer.load_state_dict(state)
            log.info("resuming %s at step %d of %d", out_dir, trainer.step, total_steps)
        elif restart:
            trainer.resumed = True  # callbacks set aside what the killed run wrote past step 0
            log.info("%s has no checkpoint yet: training it again from step 0", out_dir)
        try:
            result = trainer.fit()
        finally:
            if sink is not None:
                sink.close()
        # Every rank waits here: a rank that leaves while rank 0 still evaluates tears down gloo under it.
        distributed.barrier()
        if info.rank == 0:
            # A kill between the final checkpoint and this file resumes with nothing left to train: the
            # final metrics are then the last eval row, written before the final checkpoint.
            final = result.final_metrics or _last_eval_row(out_dir)
            summary = {
                "status": "complete",
                "steps": result.steps_done,
                "final": final,
                "wall_s_last_session": result.wall_s,
            }
            write_run_json(out_dir, "summary.json", summary)
    finally:
        if created_group:
            distributed.destroy_process_group()
    return RunOutcome(run_dir=out_dir, result=result, config=cfg)


def _dist_info(host: HostSettings) -> distributed.DistInfo:
    """This process's rank and world size: torchrun's variables as the CLI passed them, else an already
    initialised default process group, else a single process."""
    if host.distributed_env:
        return distributed.DistInfo.from_env(host.distributed_env)
    return distributed.DistInfo.current()


def _listed(run_dir: str | os.PathLike) -> dict[str, str]:
    try:
        return files.read_checksums(run_dir)
    except files.ChecksumError:
        return {}


def _last_eval_row(out_dir: Path) -> dict[str, Any]:
    rows = [r for r in read_metrics(out_dir / "metrics.jsonl") if r.get("kind") == "eval"]
    return {k: v for k, v in rows[-1].items() if k != "crc"} if rows else {}


def _write_run_files(
    out_dir: Path, cfg: RunConfig, device: torch.device, command: list[str] | None, resumed_at: int | None
) -> None:
    prov_path = out_dir / "provenance.json"
    if resumed_at is None:
        write_run_json(out_dir, "config.json", cfg.to_dict())
        write_run_json(
            out_dir, "provenance.json", provenance(seed=cfg.train.seed, device=device, command=command)
        )
        return
    prov = json.loads(prov_path.read_text()) if prov_path.is_file() else {}
    prov.setdefault("resumes", []).append(
        {"at_step": resumed_at, **provenance(seed=cfg.train.seed, device=device, command=command)}
    )
    write_run_json(out_dir, "provenance.json", prov)
