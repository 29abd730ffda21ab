"""What the Lightning and Hugging Face callbacks share: one :func:`trajlab.record` recording, driven by a
framework's events instead of the user's loop.

The framework owns the loop, the model, the optimizer, the checkpoints and the RNG; the recording keeps
what it keeps for a plain loop (snapshots in the background, the exact batch of every step, the online
averages, metrics, ``recipe.json``, the finished mark) and hands its own state (averages, the loader's
position, the recorder's files) to the framework's checkpoint instead of writing resumable checkpoints
itself. Per framework event:

==========================  ===========================================================================
batch trained on            :meth:`~trajlab.runs.recording.Recording.take_batch` (before its optimizer step)
optimizer step              the recording's post-step hook counts it (step t = the t-th update)
after the step              ``flush``: batch log, averages update, snapshot on the schedule, metrics row
validation                  :meth:`FrameworkRecording.evaluate_averages`: swap each average in, recalibrate
                            BatchNorm on training batches, run the framework's evaluation, swap back
checkpoint                  :meth:`FrameworkRecording.state_dict` into the framework's checkpoint
resume                      :meth:`FrameworkRecording.open` with that state: averages bit-identical
==========================  ===========================================================================
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from trajlab.averaging import evaluate_with_bn
from trajlab.config import HostSettings
from trajlab.objective import batch_to
from trajlab.runs.loaders import LoggedBatchSampler
from trajlab.runs.recording import Recording, record

log = logging.getLogger(__name__)

EvaluateFn = Callable[[nn.Module, str], Mapping[str, float]]


def missing_extra(package: str, extra: str) -> ImportError:
    """The one-line error for an integration whose framework is not installed."""
    return ImportError(
        f"trajlab.integrations.{extra} needs {package}, which is not installed: pip install trajlab[{extra}]"
    )


class ForwardingBatchSampler(LoggedBatchSampler):
    """A :class:`LoggedBatchSampler` that answers for the batch sampler it wraps (``batch_size``,
    ``drop_last``, ``sampler`` for ``set_epoch``): frameworks read those off the loader's batch sampler."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


class LoggedLoader:
    """An iterable the framework can iterate instead of the user's DataLoader: each ``iter()`` is one
    logged pass (:meth:`~trajlab.runs.recording.Recording.logged_pass`); length, dataset and samplers are
    the user's loader's, so the framework's ``set_epoch`` calls reach the user's sampler."""

    _FORWARDED = (
        "dataset",
        "sampler",
        "batch_sampler",
        "batch_size",
        "collate_fn",
        "num_workers",
        "drop_last",
    )

    def __init__(self, recording: Recording, loader: DataLoader) -> None:
        self.recording = recording
        self.loader = loader

    def __iter__(self) -> Iterator[Any]:
        return self.recording.logged_pass(self.loader)

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        if name in self._FORWARDED:
            return getattr(self.loader, name)
        raise AttributeError(name)


class FrameworkRecording:
    """A recording opened on the framework's model, optimizer and training loader at train start.

    Args:
        run_dir: the run directory.
        framework: ``"lightning"`` or ``"hf"`` (written into ``recipe.json``).
        bn_batches: training batches for the BatchNorm recalibration of each average at evaluation.
        options: the keyword arguments of :func:`trajlab.record` (``loss_fn``, ``snapshots``,
            ``averages``, ``average_every_steps``, factories, ...).
    """

    def __init__(self, run_dir: str | Path, *, framework: str, bn_batches: int, **options: Any) -> None:
        if bn_batches < 1:
            raise ValueError(f"bn_batches must be >= 1, got {bn_batches}")
        self.run_dir = Path(run_dir)
        self.framework = framework
        self.bn_batches = int(bn_batches)
        self.options = options
        self.recording: Recording | None = None
        self.loader: DataLoader | None = None
        self._last_state: dict[str, Any] | None = None

    @property
    def is_open(self) -> bool:
        return self.recording is not None

    def open(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loader: DataLoader,
        state: dict[str, Any] | None,
        host: HostSettings | None = None,
    ) -> Recording:
        """Start (``state=None``) or resume the recording; ``loader`` is the framework's training loader."""
        if self.recording is not None:
            raise RuntimeError(f"the recording of {self.run_dir} is already open (one fit per callback)")
        rec = record(
            self.run_dir,
            model,
            optimizer,
            checkpoint_every_steps=0,  # the framework checkpoints; the run keeps only a final checkpoint
            framework=self.framework,
            host=host,
            **self.options,
        )
        rec.framework_state = state
        rec.__enter__()
        try:
            rec.use_loader(loader)
        except BaseException as e:
            rec.__exit__(type(e), e, None)
            raise
        self.recording, self.loader = rec, loader
        return rec

    def close(self, error: BaseException | None = None) -> None:
        """End the recording: finished (``summary.json``) without ``error``, unfinished with one."""
        rec, self.recording = self.recording, None
        if rec is None:
            return
        if error is None:
            self._last_state = rec.state_dict(training=False)
            rec.__exit__(None, None, None)
        else:
            rec.__exit__(type(error), error, None)

    def state_dict(self) -> dict[str, Any] | None:
        """What the framework's checkpoint keeps: averages, loader position, RNG, the recorder's files (its
        snapshots flushed to disk first); no model or optimizer, the framework saves those."""
        if self.recording is None:
            return self._last_state
        return self.recording.state_dict(training=False)

    # ---- evaluation ------------------------------------------------------------------------------------
    def evaluate_averages(
        self, model: nn.Module, evaluate: EvaluateFn, device: torch.device | None = None
    ) -> dict[str, dict[str, float]]:
        """``{average: metrics}``: each average swapped into ``model``, BatchNorm recalibrated on training
        batches, ``evaluate(model, name)`` run, the model's own weights and buffers restored.

        The RNG is forked around it, so evaluating averages leaves training bit-identical.
        """
        rec = self.recording
        if rec is None or rec.averaged is None or not rec.averaged.active:
            return {}
        device = device or next(model.parameters()).device
        out: dict[str, dict[str, float]] = {}
        with _forked_rng(device):
            for name in rec.averaged.names:
                with rec.averaged.swap_into(model, name) as swapped:
                    bn, metrics = evaluate_with_bn(
                        swapped,
                        lambda m, n=name: evaluate(m, n),
                        self._bn_batches(device),
                        self.bn_batches,
                        forward=rec.loss_fn,
                    )
                out[name] = {**metrics, "bn_recalibrated": float(bn == "recalibrated")}
        return out

    def _bn_batches(self, device: torch.device) -> Iterator[Any]:
        """The first ``bn_batches`` training batches in dataset order (a loader of its own: the logged
        loader's position and the training RNG are untouched)."""
        loader = self.loader
        assert loader is not None
        size = getattr(loader.batch_sampler, "batch_size", None) or loader.batch_size or 1
        plain = DataLoader(loader.dataset, batch_size=size, shuffle=False, collate_fn=loader.collate_fn)
        for i, batch in enumerate(plain):
            if i >= self.bn_batches:
                return
            yield batch_to(batch, device)


def average_names(recording: FrameworkRecording) -> Sequence[str]:
    rec = recording.recording
    return rec.averaged.names if rec is not None and rec.averaged is not None else []


@contextlib.contextmanager
def _forked_rng(device: torch.device) -> Iterator[None]:
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield
