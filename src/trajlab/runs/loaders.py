"""A user's DataLoader, re-made so that the indices of every batch it yields are known, and resumable.

:func:`logged_loader` builds a DataLoader with the user's dataset, collate function, workers and
generator, whose batch sampler is the user's wrapped in :class:`LoggedBatchSampler`. That wrapper runs in
the main process (also with worker processes: workers receive index lists from it), so it sees every
index list in the order the loader will yield the batches, prefetching included; it appends each list to
a FIFO that the recorder pops one entry from per batch it hands out. To resume in the middle of an epoch
it skips the first ``skip`` index lists without loading their data.

Random augmentation inside a user's ``Dataset`` is the user's: it is replayed exactly after a resume only
when it runs in the main process (``num_workers=0``, the global RNG is checkpointed), and a batch of a
logged step can be rebuilt with the same draws only through :class:`SeededAugmentation`, which derives
every sample's random generator from the step's logged seed and the sample's index.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

# splitmix64-style constants: seeds for (batch seed, index) pairs that do not collide in practice.
_MIX_A, _MIX_B = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9
_MASK = (1 << 63) - 1


def mix_seed(seed: int, index: int) -> int:
    """A 63-bit seed for sample ``index`` of a batch with seed ``seed`` (deterministic, well spread)."""
    z = (seed * _MIX_A + index * _MIX_B + 0x94D049BB133111EB) & ((1 << 64) - 1)
    z = ((z ^ (z >> 30)) * _MIX_B) & ((1 << 64) - 1)
    return (z ^ (z >> 31)) & _MASK


class SeededAugmentation(Dataset):
    """A dataset whose random augmentation is replayable: ``transform(sample, generator)`` draws only from
    ``generator``, seeded from the batch's logged seed and the sample's index.

    Wrap your dataset and move its random transforms into ``transform``; the recorder logs each step's
    seed, so :meth:`trajlab.runs.RecordedRun.batch` rebuilds the step's batch with the same draws.

    Args:
        dataset: the un-augmented map-style dataset.
        transform: ``transform(sample, generator) -> sample``; use ``torch.rand(..., generator=generator)``
            and the like, never the global RNG.

    Indexing with a plain int applies no augmentation (e.g. for evaluation); the recorder's sampler
    passes ``(index, batch_seed)`` pairs.
    """

    def __init__(self, dataset: Any, transform: Callable[[Any, torch.Generator], Any]) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, tuple):
            index, seed = key
            generator = torch.Generator().manual_seed(mix_seed(int(seed), int(index)))
            return self.transform(self.dataset[int(index)], generator)
        return self.dataset[key]


class LoggedBatchSampler:
    """The user's batch sampler, logging every index list into ``fifo`` as the loader draws it.

    Args:
        inner: the user's batch sampler (yields lists of indices).
        fifo: where each drawn index list goes (the recorder pops one per batch it hands out).
        skip: index lists to skip at the start of the next pass (resume inside an epoch).
        seeds: ``seeds(n) -> int``, the seed of the n-th batch of the run, when the dataset is a
            :class:`SeededAugmentation` (the sampler then yields ``(index, seed)`` pairs).
        first_batch: the run's batch number of this pass's first batch (for ``seeds``).
    """

    def __init__(
        self,
        inner: Any,
        fifo: collections.deque,
        *,
        skip: int = 0,
        seeds: Callable[[int], int] | None = None,
        first_batch: int = 0,
    ) -> None:
        self.inner = inner
        self.fifo = fifo
        self.skip = skip
        self.seeds = seeds
        self.first_batch = first_batch
        # Called once the skipped index lists are behind (or the pass ended while skipping): a resume
        # restores the checkpoint's RNG there, after the sampler drew the epoch's order.
        self.on_position: Callable[[], None] | None = None

    def _at_position(self) -> None:
        callback, self.on_position = self.on_position, None
        if callback is not None:
            callback()

    def __iter__(self) -> Iterator[list[Any]]:
        skip, self.skip = self.skip, 0
        n = self.first_batch
        for i, indices in enumerate(self.inner):
            if i < skip:
                continue
            self._at_position()
            ids = [int(j) for j in indices]
            seed = self.seeds(n) if self.seeds is not None else None
            self.fifo.append((ids, seed))
            n += 1
            yield ids if seed is None else [(j, seed) for j in ids]
        self._at_position()

    def __len__(self) -> int:
        return len(self.inner) - self.skip


def loader_settings(loader: DataLoader) -> dict[str, Any]:
    """The DataLoader arguments to keep when re-making ``loader`` with another batch sampler."""
    if not isinstance(loader, DataLoader):
        raise TypeError(f"expected a torch.utils.data.DataLoader, got {type(loader).__name__}")
    if loader.batch_sampler is None:
        raise ValueError(
            "the DataLoader has batch_size=None (no automatic batching); trajlab logs batches of indices: "
            "give it a batch_size or a batch_sampler"
        )
    if isinstance(loader.dataset, torch.utils.data.IterableDataset):
        raise ValueError(
            "an IterableDataset has no indices to log; record a map-style dataset (one with __getitem__ "
            "and __len__)"
        )
    settings: dict[str, Any] = {
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "multiprocessing_context": loader.multiprocessing_context,
        "generator": loader.generator,
        "persistent_workers": loader.persistent_workers,
        "pin_memory_device": loader.pin_memory_device,
    }
    if loader.num_workers > 0:
        settings["prefetch_factor"] = loader.prefetch_factor
    return settings


def logged_loader(loader: DataLoader, batch_sampler: LoggedBatchSampler) -> DataLoader:
    """``loader`` re-made with ``batch_sampler`` (same dataset, collate function, workers, generator)."""
    return DataLoader(loader.dataset, batch_sampler=batch_sampler, **loader_settings(loader))


def sampler_facts(loader: DataLoader) -> dict[str, Any]:
    """What the recipe records about the loader: batch size, drop_last, sampler class, shuffling."""
    batch_sampler = loader.batch_sampler
    sampler = getattr(batch_sampler, "sampler", None)
    return {
        "batch_size": getattr(batch_sampler, "batch_size", None),
        "drop_last": bool(getattr(batch_sampler, "drop_last", False)),
        "sampler": type(sampler).__name__ if sampler is not None else type(batch_sampler).__name__,
        "num_workers": loader.num_workers,
    }


def collate(dataset: Any, keys: Sequence[Any], collate_fn: Callable[[list[Any]], Any]) -> Any:
    """The batch of ``keys`` (indices, or ``(index, seed)`` pairs for a SeededAugmentation)."""
    return collate_fn([dataset[k] for k in keys])
