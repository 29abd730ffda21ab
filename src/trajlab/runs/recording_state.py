"""The state and the step bookkeeping behind :class:`trajlab.runs.recording.Recording`.

Checks happen in the constructor (nothing is written there); ``__enter__`` writes the run files or resumes;
:meth:`RecordingCore.flush` does the work of every optimizer step seen since the last call; ``__exit__``
finishes the run or leaves it unfinished. The per-step work goes through the same callbacks the engine
uses (the trajectory recorder, the averaging callback, the checkpointer), fed a
:class:`~trajlab.train.callbacks.StepContext` built here.
"""

from __future__ import annotations

import collections
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trajlab import files
from trajlab.config import HostSettings
from trajlab.provenance import provenance
from trajlab.runs import recording_support as support
from trajlab.runs.recipe import RECIPE_FILE, Recipe, optimizer_facts, read_recipe
from trajlab.train import distributed
from trajlab.train.callbacks import StepContext
from trajlab.train.metrics import MetricsLog
from trajlab.trajectory.quarantine import set_aside_metrics

log = logging.getLogger(__name__)

STATE_FORMAT = "trajlab-recording-state"


class RecordingError(RuntimeError):
    """The recording cannot go on (a write failed on rank 0, a bad use of the API); one line says why."""


class RecordingCore:
    """See :class:`trajlab.runs.recording.Recording`."""

    def __init__(
        self, run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, **opts: Any
    ) -> None:
        from trajlab.averaging import unwrap_model

        self.run_dir = run_dir
        self.model = unwrap_model(model)
        self.optimizer = optimizer
        self.opts = opts
        self.host: HostSettings = opts["host"]
        self.seed = int(opts["seed"])
        self.schedulers = list(opts["schedulers"])
        self.dist = distributed.DistInfo.current()
        self.loss_fn = support.loss_hook(opts["loss_fn"])
        self._check_options()
        self.step = self.epoch = self.batches_in_epoch = self.batches_drawn = 0
        self.epoch_rng: dict[str, Any] | None = None
        self.resume_point: dict[str, Any] | None = None
        self.drawn: collections.deque = collections.deque()
        self.seeded = False
        self._loader: Any = None
        self._pending: list[tuple[list[int], int | None]] = []  # batches drawn since the last update
        self._done_steps: list[tuple[int, list[tuple[list[int], int | None]], float]] = []
        self._metrics: dict[str, list[Any]] = {}
        self._last_eval: dict[str, Any] = {}
        self._open = False
        # A framework adapter (trajlab.integrations) resumes from the framework's checkpoint, never from
        # run_dir/checkpoints: it sets this to the state it saved there (None: a fresh start).
        self.framework_state: dict[str, Any] | None = None
        self._hook: Any = None
        self._callbacks: list[Any] = []
        self._sink: MetricsLog | None = None
        self._t0 = time.perf_counter()

    # ---- checks (nothing written) ---------------------------------------------------------------------
    def _check_options(self) -> None:
        o = self.opts
        for name in ("checkpoint_every_steps", "log_every_steps", "keep_checkpoints"):
            low = 1 if name != "checkpoint_every_steps" else 0
            if not isinstance(o[name], int) or o[name] < low:
                raise ValueError(f"record(): {name} must be an integer >= {low}, got {o[name]!r}")
        if not isinstance(self.model, nn.Module):
            raise TypeError(f"record(): model must be an nn.Module, got {type(self.model).__name__}")
        if not isinstance(self.optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"record(): optimizer must be a torch optimizer, got {type(self.optimizer).__name__}"
            )
        for s in self.schedulers:
            if not (hasattr(s, "state_dict") and hasattr(s, "load_state_dict")):
                raise TypeError(
                    f"record(): schedulers need state_dict/load_state_dict, got {type(s).__name__}"
                )
        self.schedule = support.schedule(o["snapshots"])
        self.averaged = self._averages()

    def _averages(self) -> Any:
        rules = list(self.opts["averages"])
        if not rules:
            return None
        from trajlab.averaging import AveragedWeights, KernelBuild, StorageOptions

        storage = StorageOptions(
            cpu_kernel=self.host.cpu_kernel,
            kernel_build=KernelBuild(cache_root=self.host.kernel_cache_root, compiler=self.host.compiler),
        )
        return AveragedWeights(self.model, rules, self.opts["average_every_steps"], storage)

    def recipe(self) -> Recipe:
        """What ``recipe.json`` says of this recording (factories as references)."""
        loader = self._loader
        facts: dict[str, Any] = {}
        collate = self.opts["collate_fn"]
        if loader is not None:
            from trajlab.runs.loaders import SeededAugmentation, sampler_facts

            facts = sampler_facts(loader)
            if collate is None and loader.collate_fn is not torch.utils.data.default_collate:
                collate = loader.collate_fn
            self.seeded = isinstance(loader.dataset, SeededAugmentation)
        return Recipe(
            model_factory=support.reference(self.opts["model_factory"], "model_factory"),
            data_factory=support.reference(self.opts["data_factory"], "data_factory"),
            loss_fn=support.reference(self.opts["loss_fn"], "loss_fn"),
            collate_fn=support.reference(collate, "collate_fn"),
            loader=facts,
            seeded_augmentation=self.seeded,
            seed=self.seed,
            world_size=self.dist.world_size,
            optimizer=optimizer_facts(self.optimizer),
            snapshots=self.schedule.to_dict(),
            averages=self._average_facts(),
            checkpoint_every_steps=self.opts["checkpoint_every_steps"],
            framework=self.opts["framework"],
        )

    def _average_facts(self) -> list[dict[str, Any]]:
        if self.averaged is None:
            return []
        return [
            {"name": n, "every_steps": self.averaged.every_steps[n], "closed_form": r.closed_form()}
            for n, r in self.averaged.rules.items()
        ]

    # ---- enter / exit --------------------------------------------------------------------------------
    def __enter__(self) -> Any:
        self._refuse_other_runs()
        if self.opts["framework"] != "plain":
            state = self.framework_state
        else:
            state = self._latest_state() if self.opts["resume"] else None
        # Killed before its first checkpoint: start again from step 0 over what was written (the same
        # code writes the same files), instead of refusing the directory.
        restart = state is None and (self.run_dir / "trajectory").is_dir()
        resumed_at = int(state["step"]) if state is not None else 0 if restart else None
        self._make_callbacks()
        if self.dist.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._write_provenance(resumed_at=resumed_at)
            if resumed_at is not None:
                set_aside_metrics(self.run_dir, resumed_at)  # rows past it go to RUN/quarantine/
            self._sink = support.metrics_log(self.run_dir, self.opts["tensorboard"])
        if state is not None:
            self._load(state)
        ctx = self._context(self.step, [])
        ctx.is_resumed_start = resumed_at is not None
        self._call("on_train_start", ctx)
        self._hook = self.optimizer.register_step_post_hook(self._on_optimizer_step)
        self._open = True
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._hook is not None:
            self._hook.remove()
        self._open = False
        if exc_type is None:
            self.flush()
            self._finish()
            return
        log.warning(
            "recording of %s stopped at step %d (%s): the run is unfinished; run the same code "
            "again to resume it from its last checkpoint",
            self.run_dir,
            self.step,
            exc_type.__name__,
        )
        try:
            self._call("on_train_end", self._context(self.step, []))
        finally:
            self._close_sink()

    def _finish(self) -> None:
        ctx = self._context(self.step, [])
        ctx.total_steps = self.step  # the run ends here: the checkpointer saves its final state
        if self.dist.rank == 0 and self._sink is not None and self._last_eval.get("step") != self.step:
            self._sink({"kind": "end", "step": self.step, "wall_s": time.perf_counter() - self._t0})
        self._call("on_train_end", ctx)
        self._close_sink()
        if self.dist.rank == 0:
            summary = {
                "status": "complete",
                "steps": self.step,
                "final": self._last_eval,
                "recipe": RECIPE_FILE,
                "wall_s_last_session": time.perf_counter() - self._t0,
            }
            files.write_run_json(self.run_dir, "summary.json", summary)  # its sha256 in checksums.json
        support.barrier(self.dist)

    def _close_sink(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None

    # ---- steps ---------------------------------------------------------------------------------------
    def _on_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        lr = float(optimizer.param_groups[0]["lr"])
        self.step += 1
        self._done_steps.append((self.step, self._pending, lr))
        self._pending = []

    def _take(self, drawn: tuple[list[int], int | None]) -> None:
        """A batch handed to the loop: it belongs to the next optimizer step."""
        self._pending.append(drawn)
        self.batches_drawn += 1
        self.batches_in_epoch += 1

    def flush(self) -> None:
        """Do the work of every optimizer step seen since the last call (the loop calls it for you)."""
        while self._done_steps:
            step, batches, lr = self._done_steps.pop(0)
            ctx = self._context(step, batches, lr)
            failed: BaseException | None = None
            try:
                self._call("on_step", ctx)
                self._metrics_row(step, lr)
                self._call("on_step_end", ctx)
            except Exception as e:  # every rank must hear of it before anyone waits on a collective
                failed = e
            if support.any_rank_failed(self.dist, failed is not None):
                if failed is not None:
                    raise failed
                raise RecordingError(
                    f"rank 0 could not write the recording at step {step}; stopping every rank"
                )

    def _context(
        self, step: int, batches: list[tuple[list[int], int | None]], lr: float | None = None
    ) -> StepContext:
        indices, seed = self._global_batch(batches)
        return StepContext(
            step=step,
            epoch=float(self.epoch),
            lr=float(self.optimizer.param_groups[0]["lr"]) if lr is None else lr,
            batch_indices=indices,
            aug_seed=seed,
            loss=None,
            model=self.model,
            optimizer=self.optimizer,
            total_steps=10**12,
            device=next(self.model.parameters()).device,
            evaluate=support.no_evaluate,
            train_batches=support.no_batches,
            trainer_state=self.state_dict,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )

    def _global_batch(self, batches: list[tuple[list[int], int | None]]) -> tuple[torch.Tensor, int]:
        if self.seeded and len(batches) > 1:
            raise RecordingError(
                "SeededAugmentation needs one batch per optimizer step (its seed is per step); without "
                "gradient accumulation, or unwrap the dataset"
            )
        local = torch.tensor([i for ids, _ in batches for i in ids], dtype=torch.int64)
        seed = batches[0][1] if batches and batches[0][1] is not None else -1
        if self.dist.world_size > 1:
            local = support.gather_indices(local, self.dist)
        return local, int(seed)

    # ---- metrics -------------------------------------------------------------------------------------
    def log(self, **scalars: Any) -> None:
        """Values of the current step (floats or 0-d tensors; tensors are not read until a row is written):
        a train row every ``log_every_steps`` steps holds their means."""
        for key, value in scalars.items():
            value = value.detach() if isinstance(value, torch.Tensor) else float(value)
            self._metrics.setdefault(key, []).append(value)

    def log_eval(self, **scalars: float) -> None:
        """An eval row for the current step (e.g. ``test_loss=..., test_acc=...`` of your own evaluation)."""
        self.flush()
        row = {"kind": "eval", "step": self.step, **{k: float(v) for k, v in scalars.items()}}
        self._last_eval = {**row, "wall_s": time.perf_counter() - self._t0}
        if self.dist.rank == 0 and self._sink is not None:
            self._sink(self._last_eval)

    def _metrics_row(self, step: int, lr: float) -> None:
        if step % self.opts["log_every_steps"] or self.dist.rank != 0 or self._sink is None:
            return
        row: dict[str, Any] = {"kind": "train", "step": step, "epoch": self.epoch, "lr": lr}
        for key, values in self._metrics.items():
            row[key] = sum(float(v) for v in values) / len(values)
        self._metrics = {}
        row["wall_s"] = time.perf_counter() - self._t0
        self._sink(row)

    # ---- state ---------------------------------------------------------------------------------------
    def state_dict(self, training: bool = True) -> dict[str, Any]:
        """The checkpoint: model, optimizer, schedulers, RNG, the loader's position and every callback.

        Args:
            training: include the model, optimizer and schedulers (``False``: a framework checkpoints them).
        """
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        out: dict[str, Any] = {"format": STATE_FORMAT, "version": 1, "step": self.step}
        if training:
            out["model"] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            out["optimizer"] = self.optimizer.state_dict()
            out["schedulers"] = [s.state_dict() for s in self.schedulers]
        return {
            **out,
            "rng": rng,
            "loader": {
                "epoch": self.epoch,
                "batches_in_epoch": self.batches_in_epoch,
                "batches_drawn": self.batches_drawn,
                "epoch_rng": self.epoch_rng,
            },
            "metrics": {k: [float(v) for v in vs] for k, vs in self._metrics.items()},
            "callbacks": {cb.name: cb.state_dict() for cb in self._callbacks},
        }

    def _load(self, state: dict[str, Any]) -> None:
        if "model" in state:  # absent when a framework checkpointed model and optimizer itself
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        for s, saved in zip(self.schedulers, state.get("schedulers", [])):
            s.load_state_dict(saved)
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        loader = state["loader"]
        self.step = int(state["step"])
        self.epoch, self.batches_drawn = int(loader["epoch"]), int(loader["batches_drawn"])
        self.batches_in_epoch = int(loader["batches_in_epoch"])  # the resumed pass skips these
        if loader["batches_in_epoch"] and loader["epoch_rng"] is not None:
            self.resume_point = {**loader, "rng_at_checkpoint": state["rng"]}
        self._metrics = {k: list(v) for k, v in state.get("metrics", {}).items()}
        for cb in self._callbacks:
            if cb.name in state.get("callbacks", {}):
                cb.load_state_dict(state["callbacks"][cb.name])
        log.info("resuming %s at step %d (epoch %d)", self.run_dir, self.step, self.epoch)

    # ---- files ------------------------------------------------------------------------------------------
    def _refuse_other_runs(self) -> None:
        """Only an unfinished recording of this loop may be continued; anything else in run_dir is refused."""
        d = self.run_dir
        if d.exists() and not d.is_dir():
            raise RecordingError(f"{d} exists and is not a directory; choose another run directory")
        if not d.is_dir() or not any(d.iterdir()):
            return
        if (d / "config.json").is_file():
            raise RecordingError(f"{d} holds a trajlab-engine run; record into another directory")
        if not (d / RECIPE_FILE).is_file() and not (d / "provenance.json").is_file():
            raise RecordingError(f"{d} is not empty and holds no recording; choose an empty or new directory")
        if (d / "summary.json").is_file() and self.framework_state is not None:
            # A framework continuing from one of its checkpoints (e.g. fit again with more epochs): the
            # run is unfinished again until this fit ends; files after the checkpoint's step are set aside.
            if self.dist.rank == 0:
                from trajlab.trajectory.quarantine import Quarantine

                quarantine = Quarantine(d, int(self.framework_state.get("step", 0)))
                quarantine.move(d / "summary.json")  # set aside, not deleted; a new one ends this fit
                files.record_checksum(d, "summary.json", None)
                quarantine.report()
            return
        if (d / "summary.json").is_file():
            raise RecordingError(
                f"{d} holds a finished recording (summary.json); record into another directory"
            )
        if not self.opts["resume"]:
            raise RecordingError(f"{d} holds an unfinished recording; pass resume=True to continue it")

    def _latest_state(self) -> dict[str, Any] | None:
        from trajlab.trajectory import load_latest_checkpoint

        if not (self.run_dir / "checkpoints").is_dir():
            return None
        state = load_latest_checkpoint(self.run_dir)
        if state is not None and state.get("format") != STATE_FORMAT:
            raise RecordingError(f"{self.run_dir}: its checkpoints are not a recording's; record elsewhere")
        return state

    def _make_callbacks(self) -> None:
        from trajlab.trajectory import Checkpointer, Recorder

        self._callbacks = [Recorder(self.run_dir, self.schedule, dtype=self.opts["snapshot_dtype"])]
        if self.averaged is not None:
            from trajlab.averaging import AveragingCallback

            self._callbacks.append(AveragingCallback(self.averaged))
        every = self.opts["checkpoint_every_steps"] or 10**12
        self._callbacks.append(Checkpointer(self.run_dir, every, keep=self.opts["keep_checkpoints"]))

    def _write_provenance(self, resumed_at: int | None) -> None:
        path = self.run_dir / "provenance.json"
        device = next(self.model.parameters()).device
        here = provenance(seed=self.seed, device=device, command=None)
        if resumed_at is None or not path.is_file():
            files.write_run_json(self.run_dir, "provenance.json", here)
            return
        prov = json.loads(files.read_verified(self.run_dir, "provenance.json"))
        prov.setdefault("resumes", []).append({"at_step": resumed_at, **here})
        files.write_run_json(self.run_dir, "provenance.json", prov)

    def _remember_loader(self, loader: Any) -> None:
        """The first loader seen fixes the recipe (written once, checked against on resume)."""
        from trajlab.runs.loaders import loader_settings

        loader_settings(loader)  # a clear error for loaders that cannot be logged
        if self._loader is loader:
            return
        if self._loader is not None:
            raise RecordingError("rec.batches() got a second DataLoader; record one training loader per run")
        self._loader = loader
        recipe = self.recipe()
        path = self.run_dir / RECIPE_FILE
        if path.is_file():
            old = read_recipe(self.run_dir)
            differ = old.compatible_with(recipe)
            if differ:
                raise RecordingError(
                    f"{path}: this loop differs from the recorded one in {', '.join(differ)}; "
                    "record into a new run directory"
                )
        if self.dist.rank == 0:
            files.write_run_json(self.run_dir, RECIPE_FILE, recipe.to_dict())  # sha256 in checksums.json

    def _check_open(self) -> None:
        if not self._open:
            raise RecordingError("use the recording inside its with-block: with trajlab.record(...) as rec:")

    def _call(self, hook: str, ctx: StepContext) -> None:
        for cb in self._callbacks:
            getattr(cb, hook)(ctx)
