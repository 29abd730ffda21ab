"""Datasets held in memory as uint8 tensors, batched augmentation, and a stateless seeded sampler.

Every step's batch can be rebuilt from ``(seed, step)``: ``BatchSampler.indices(step)`` gives the
sample indices and ``BatchSampler.aug_seed(step)`` the augmentation seed for ``make_batch``. This
package knows nothing of training.
"""

from trajlab.data.batches import (
    AugmentDraws,
    apply_augmentation,
    augment,
    draw_augmentation,
    iterate_eval,
    make_batch,
    normalize,
)
from trajlab.data.dataset import KNOWN_STATS, ImageDataset, channel_stats, subset
from trajlab.data.errors import DataError
from trajlab.data.loading import load_dataset
from trajlab.data.locate import DATASETS, find_data_dir
from trajlab.data.sampler import BatchSampler, shard, shard_rows

__all__ = [
    "DATASETS",
    "KNOWN_STATS",
    "AugmentDraws",
    "BatchSampler",
    "DataError",
    "ImageDataset",
    "apply_augmentation",
    "augment",
    "channel_stats",
    "draw_augmentation",
    "find_data_dir",
    "iterate_eval",
    "load_dataset",
    "make_batch",
    "normalize",
    "shard",
    "shard_rows",
    "subset",
]
