"""Glue from a :class:`~trajlab.config.RunConfig` to datasets, batches, model, optimizer and schedule.

This is the one recipe that turns a config into tensors: :class:`trajlab.runs.RecordedRun` uses it too, to
rebuild the exact batch of any logged step.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from trajlab.config import ConfigError, DataConfig, RunConfig
from trajlab.data import (
    BatchSampler,
    ImageDataset,
    iterate_eval,
    load_dataset,
    make_batch,
    shard_rows,
    subset,
)
from trajlab.models import build_model
from trajlab.train.optim import build_optimizer
from trajlab.train.schedules import Schedule, ScheduleSpec, build_schedule

log = logging.getLogger(__name__)

# Seed offset of the batches used for BatchNorm recalibration: independent of the training order.
_RECALIBRATION_SEED_OFFSET = 7_919
# Seed of the held-out control batches' sampler (plus the caller's seed): fixed, so every probe, claim and
# report of a run compares against the same held-out batches.
_HELDOUT_SEED = 104_729


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; anything else as given (``cpu``, ``cuda:1``, ``mps``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but CUDA is not available here; use train.device=cpu or auto")
    return device


def _data_cfg(cfg: RunConfig | DataConfig | dict[str, Any]) -> DataConfig:
    if isinstance(cfg, RunConfig):
        return cfg.data
    if isinstance(cfg, DataConfig):
        return cfg
    raw = cfg.get("data", cfg)
    return DataConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in raw.items()})


def build_train_data(
    cfg: RunConfig | DataConfig | dict[str, Any], search_dirs: Sequence[str] = ()
) -> ImageDataset:
    """The training split as configured (subset included). Accepts a config or config.json's dict;
    ``search_dirs``: where else to look for the data when ``data.data_dir`` is not set."""
    d = _data_cfg(cfg)
    ds = load_dataset(
        d.name,
        "train",
        d.data_dir,
        pad_to=d.pad_to or None,
        download=d.download,
        image_size=d.image_size,
        synthetic=d.synthetic or None,
        search_dirs=search_dirs,
    )
    if d.train_subset:
        ds = subset(ds, d.train_subset, seed=d.subset_seed)
    return ds


def build_test_data(
    cfg: RunConfig | DataConfig | dict[str, Any], search_dirs: Sequence[str] = ()
) -> ImageDataset:
    """The test split as configured (subset included); arguments as :func:`build_train_data`."""
    d = _data_cfg(cfg)
    ds = load_dataset(
        d.name,
        "test",
        d.data_dir,
        pad_to=d.pad_to or None,
        download=d.download,
        image_size=d.image_size,
        synthetic=d.synthetic or None,
        search_dirs=search_dirs,
    )
    if d.test_subset:
        ds = subset(ds, d.test_subset, seed=d.subset_seed)
    return ds


class DatasetBatches:
    """Training batches from an in-memory dataset and a stateless seeded sampler.

    Step t's global batch is ``sampler.indices(t)`` augmented with ``sampler.aug_seed(t)``; this rank
    takes rows ``[rank * b, (rank + 1) * b)`` of it (b = global batch / world size), computed from the
    global batch's augmentation draws, so the union over ranks is exactly the single-process batch.
    """

    def __init__(
        self,
        ds: ImageDataset,
        data: DataConfig,
        *,
        batch_size: int,
        seed: int,
        device: torch.device,
        channels_last: bool,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size % world_size:
            raise ConfigError(
                f"train.batch_size={batch_size} must be divisible by the number of processes ({world_size})"
            )
        if batch_size > len(ds):
            raise ConfigError(
                f"train.batch_size={batch_size} is larger than the training set ({len(ds)} images); "
                "lower train.batch_size or raise data.train_subset"
            )
        self.ds = ds
        self.data = data
        self.sampler = BatchSampler(len(ds), batch_size, seed)
        self.seed = seed
        self.device = device
        self.channels_last = channels_last
        self.rank = rank
        self.world_size = world_size
        self.global_batch_size = batch_size
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self._rows = shard_rows(batch_size, rank, world_size)

    def make(
        self, indices: torch.Tensor, aug_seed: int | None, rows: slice | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch of ``indices`` with augmentation seed ``aug_seed`` (when the run augments), rows
        ``rows`` of it (default all), as the trainer builds it."""
        return make_batch(
            self.ds,
            indices,
            aug_seed=aug_seed if self.data.augment else None,
            crop_padding=self.data.crop_padding,
            flip=self.data.flip,
            device=self.device,
            channels_last=self.channels_last,
            rows=rows,
        )

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        indices = self.sampler.indices(step)
        aug_seed = self.sampler.aug_seed(step)
        rows = self._rows if self.world_size > 1 else None
        x, y = self.make(indices, aug_seed, rows)
        return x, y, indices, aug_seed

    def epoch_of(self, step: int) -> float:
        return self.sampler.epoch_of(step)

    def recalibration_batches(self, max_batches: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Deterministic augmented training batches from an independent seed (for BN recalibration)."""
        sampler = BatchSampler(len(self.ds), self.global_batch_size, self.seed + _RECALIBRATION_SEED_OFFSET)
        for step in range(1, max_batches + 1):
            yield self.make(sampler.indices(step), sampler.aug_seed(step), None)

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The whole training set in order, without augmentation (full-batch quantities)."""
        return iterate_eval(self.ds, batch_size, device=self.device, channels_last=self.channels_last)


def heldout_batches(
    test_ds: ImageDataset,
    data: DataConfig,
    *,
    batch_size: int,
    count: int,
    seed: int = 0,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The held-out control batches: the one definition every probe, claim, demo and report uses.

    Batch i (i = 1..count) holds the test-set images a seeded sampler draws for its step i (seed
    ``104_729 + seed``, independent of any training order), at the training batch size and through the
    training augmentation when the run augments, so a held-out batch differs from a training batch only in
    never having been trained on. The batches are disjoint (one pass of the sampler over the test set).

    Raises:
        ConfigError: the test set holds fewer than ``count`` disjoint batches.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    available = len(test_ds) // batch_size
    if count > available:
        raise ConfigError(
            f"the test set ({len(test_ds)} images) holds only {available} held-out batches of {batch_size}; "
            "ask for fewer or raise data.test_subset"
        )
    sampler = BatchSampler(len(test_ds), batch_size, _HELDOUT_SEED + seed)
    return [
        make_batch(
            test_ds,
            sampler.indices(i),
            aug_seed=sampler.aug_seed(i) if data.augment else None,
            crop_padding=data.crop_padding,
            flip=data.flip,
            device=device,
            channels_last=channels_last,
        )
        for i in range(1, count + 1)
    ]


def build_model_for(cfg: RunConfig, ds: ImageDataset) -> nn.Module:
    """The configured model, sized to the dataset's channels and classes."""
    m = cfg.model
    kwargs: dict[str, Any] = {"num_classes": ds.num_classes, "in_channels": ds.images.shape[1]}
    if m.width is not None:
        kwargs["width"] = m.width
    if m.stem is not None:
        kwargs["stem"] = m.stem
    return build_model(m.name, **kwargs)


def total_steps_for(cfg: RunConfig, n_train: int) -> int:
    """``train.steps`` if set, else ``ceil(epochs * steps_per_epoch)``."""
    if cfg.train.steps > 0:
        return cfg.train.steps
    steps_per_epoch = max(n_train // cfg.train.batch_size, 1)
    return max(math.ceil(cfg.train.epochs * steps_per_epoch), 1)


def build_schedule_for(cfg: RunConfig, total_steps: int) -> Schedule:
    return build_schedule(ScheduleSpec(**asdict(cfg.schedule)), cfg.optim.lr, total_steps)


def build_optimizer_for(cfg: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    return build_optimizer(
        model,
        o.name,
        o.lr,
        momentum=o.momentum,
        nesterov=o.nesterov,
        weight_decay=o.weight_decay,
        betas=o.betas,
        eps=o.eps,
    )
