"""Training checkpoints for exact resume: ``RUN/checkpoints/ckpt_{step:09d}.pt``, pruned to the last K.

Kept apart from the trajectory snapshots (those are weights for analysis; these are everything needed to
continue: model, optimizer, schedule/sampler position, RNG states, callback states). Each checkpoint is
written atomically with ``torch.save`` and gets a ``ckpt_{step:09d}.sha256`` line (``sha256sum -c``
format) written after it; loading uses ``torch.load(weights_only=True)``, so a checkpoint file cannot run
code.
"""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path
from typing import Any

import torch

from trajlab.train.callbacks import CallbackBase, StepContext
from trajlab.trajectory import layout
from trajlab.trajectory.errors import DamageError, TrajectoryError

logger = logging.getLogger(__name__)


def checkpoint_dir(run_dir: str | Path) -> Path:
    """``RUN/checkpoints``."""
    return Path(run_dir) / layout.CHECKPOINT_DIR


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``[(step, path)]`` of the checkpoint files present, oldest first."""
    return sorted(layout.steps_in_dir(checkpoint_dir(run_dir), layout.CHECKPOINT_RE).items())


def _sha_path(path: Path) -> Path:
    return path.with_suffix(".sha256")


def save_checkpoint(
    run_dir: str | Path, step: int, state: dict[str, Any], *, check_loadable: bool = False
) -> Path:
    """Write ``state`` as the checkpoint of ``step`` (atomic) and its sha256 line.

    Args:
        run_dir: run directory.
        step: the step the state is at.
        state: tensors, numbers, strings, lists and dicts only.
        check_loadable: load it back with ``weights_only=True`` first, so a state that could never be
            resumed fails now, not at resume time.

    Raises:
        TrajectoryError: the state holds something ``weights_only`` loading refuses, or the disk write failed.
    """
    path = checkpoint_dir(run_dir) / layout.checkpoint_name(step)
    buffer = io.BytesIO()
    try:
        torch.save(state, buffer)
    except Exception as exc:
        raise TrajectoryError(
            f"{path}: the trainer state cannot be saved ({_first_line(exc)}); keep it to tensors, numbers, "
            "strings, lists and dicts"
        ) from exc
    data = buffer.getbuffer()
    if check_loadable:
        try:
            torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise TrajectoryError(
                f"{path}: the trainer state cannot be loaded with weights_only=True ({_first_line(exc)}); "
                "keep it to tensors, numbers, strings, lists and dicts"
            ) from exc
    sha = hashlib.sha256(data).hexdigest()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        layout.write_file_atomic(path, data)
        layout.write_file_atomic(_sha_path(path), f"{sha}  {path.name}\n".encode())
    except OSError as exc:
        raise TrajectoryError(
            f"{path}: could not write the checkpoint of step {step} ({exc.strerror or exc}); "
            "earlier checkpoints are intact"
        ) from exc
    return path


def load_checkpoint(path: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """Load one checkpoint with ``weights_only=True`` after checking it against its sha256 line.

    Args:
        path: the ``ckpt_*.pt`` file.
        verify: require the ``.sha256`` line and a matching digest (``False``: load whatever is there).

    Raises:
        DamageError: missing, truncated, corrupt, without its sha256 line, or holding something other
            than plain data.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DamageError(f"{path}: cannot read checkpoint ({exc.strerror or exc})") from exc
    if verify:
        sha_file = _sha_path(path)
        try:
            expected = sha_file.read_text().split(" ", 1)[0].strip()
        except (OSError, UnicodeDecodeError):
            raise DamageError(f"{path}: its sha256 line {sha_file.name} is missing or unreadable") from None
        if hashlib.sha256(data).hexdigest() != expected:
            raise DamageError(f"{path}: corrupt checkpoint (sha256 differs from {sha_file.name})")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DamageError(f"{path}: unreadable checkpoint ({_first_line(exc)})") from exc
    if not isinstance(state, dict):
        raise DamageError(f"{path}: a checkpoint holds a dict, found {type(state).__name__}")
    return state


def load_latest_checkpoint(run_dir: str | Path) -> dict[str, Any] | None:
    """The newest loadable checkpoint of ``run_dir``, or ``None`` when there is none.

    A damaged newest file (truncated, corrupt, not loadable with ``weights_only=True``) is skipped with a
    warning and the previous one is used.
    """
    for step, path in reversed(list_checkpoints(run_dir)):
        try:
            state = load_checkpoint(path)
        except TrajectoryError as exc:
            logger.warning("%s; falling back to the previous checkpoint", exc)
            continue
        logger.info("resuming from %s (step %d)", path, step)
        return state
    return None


def prune_checkpoints(run_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (and their sha256 files); return what went."""
    removed: list[Path] = []
    for _, path in list_checkpoints(run_dir)[: max(0, len(list_checkpoints(run_dir)) - keep)]:
        for victim in (path, _sha_path(path)):
            try:
                victim.unlink()
                removed.append(victim)
            except FileNotFoundError:
                pass
    kept = list_checkpoints(run_dir)
    for sha in checkpoint_dir(run_dir).glob("ckpt_*.sha256"):  # lines an interrupted prune left behind
        if kept and not sha.with_suffix(".pt").exists() and int(sha.stem.split("_")[1]) < kept[0][0]:
            sha.unlink(missing_ok=True)
            removed.append(sha)
    for tmp in checkpoint_dir(run_dir).glob(f".*{layout.TMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)
    if removed:
        layout.fsync_dir(checkpoint_dir(run_dir))
    return removed


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class Checkpointer(CallbackBase):
    """Saves ``ctx.trainer_state()`` every ``every_steps`` steps (rank 0), keeping the last ``keep``.

    It saves in ``on_step_end``, after every callback's ``on_step`` and the step's metrics rows; put it last
    in the callback list all the same. The trainer state holds every callback's state, and the Recorder
    flushes its snapshots when asked for its state, so a checkpoint never refers to work not yet on disk.

    Args:
        run_dir: run directory (writes ``run_dir/checkpoints``).
        every_steps: checkpoint period in steps.
        keep: checkpoints kept on disk (older ones are deleted after a new one is complete).
        save_final: also checkpoint at the end of a completed run (so it can be extended).
    """

    name = "checkpointer"

    def __init__(
        self, run_dir: str | Path, every_steps: int, *, keep: int = 2, save_final: bool = True
    ) -> None:
        if every_steps < 1:
            raise TrajectoryError(f"checkpointer: every_steps must be >= 1, got {every_steps}")
        if keep < 1:
            raise TrajectoryError(f"checkpointer: keep must be >= 1, got {keep}")
        self.run_dir = Path(run_dir)
        self.every_steps = every_steps
        self.keep = keep
        self.save_final = save_final
        self.last_saved_step: int | None = None
        self._checked = False

    def on_train_start(self, ctx: StepContext) -> None:
        """Create ``RUN/checkpoints`` (rank 0)."""
        if ctx.rank == 0:
            try:
                checkpoint_dir(self.run_dir).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise TrajectoryError(
                    f"{checkpoint_dir(self.run_dir)}: cannot create ({exc.strerror or exc}); "
                    "choose a writable run directory"
                ) from exc

    def on_step_end(self, ctx: StepContext) -> None:
        """After every other callback's ``on_step`` and the step's metrics rows (engine hook)."""
        if ctx.rank == 0 and ctx.step % self.every_steps == 0:
            self._save(ctx)

    def on_train_end(self, ctx: StepContext) -> None:
        """Checkpoint the final state of a completed run (when ``save_final``)."""
        # Only a completed run: a run stopped by divergence or an error keeps its last good checkpoint.
        completed = ctx.step >= ctx.total_steps
        if ctx.rank == 0 and self.save_final and completed and self.last_saved_step != ctx.step:
            self._save(ctx)

    def _save(self, ctx: StepContext) -> None:
        state = ctx.trainer_state()
        save_checkpoint(self.run_dir, ctx.step, state, check_loadable=not self._checked)
        self._checked = True
        self.last_saved_step = ctx.step
        prune_checkpoints(self.run_dir, self.keep)
