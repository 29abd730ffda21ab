"""A stateless seeded batch sampler: the indices of any step are a pure function of (seed, step)."""

from __future__ import annotations

import hashlib

import torch

from trajlab.data.errors import DataError

_MASK_63 = (1 << 63) - 1


def mix_seed(*parts: int | str) -> int:
    """A 63-bit seed hashed from ``parts`` (BLAKE2b), stable across processes and platforms."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & _MASK_63


class BatchSampler:
    """Stateless: indices for any step are a pure function of (seed, step).

    Step t >= 1 trains on batch ``B_t``. With ``S = steps_per_epoch`` it lies in epoch
    ``e = (t - 1) // S`` at position ``k = (t - 1) % S``, and ``B_t = perm_e[k * B : (k + 1) * B]``,
    where ``perm_e`` is a random permutation of ``range(n)`` from a generator seeded by a hash of
    ``(seed, e)``. Any step's batch (and its augmentation seed) can therefore be rebuilt later from
    the seed alone; the permutation of the current epoch is cached so sequential use costs one
    ``randperm`` per epoch.

    Attributes:
        n_samples: Dataset size n.
        batch_size: Batch size B.
        seed: Sampler seed.
        drop_last: Drop the last incomplete batch of each epoch (else it is shorter than B).
        steps_per_epoch: ``n // B`` with ``drop_last``, else ``ceil(n / B)``.
    """

    def __init__(self, n_samples: int, batch_size: int, seed: int, drop_last: bool = True) -> None:
        if batch_size < 1 or n_samples < 1:
            raise DataError(f"need n_samples >= 1 and batch_size >= 1, got {n_samples} and {batch_size}")
        if drop_last and batch_size > n_samples:
            raise DataError(
                f"batch_size {batch_size} exceeds the {n_samples} samples with drop_last=True; "
                "use a smaller batch or drop_last=False"
            )
        self.n_samples = n_samples
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        self.steps_per_epoch = n_samples // batch_size if drop_last else -(-n_samples // batch_size)
        self._cached: tuple[int, torch.Tensor] | None = None

    def permutation(self, epoch: int) -> torch.Tensor:
        """The permutation of ``range(n_samples)`` used in ``epoch`` (0-based); int64 ``[n]``."""
        if self._cached is None or self._cached[0] != epoch:
            g = torch.Generator().manual_seed(mix_seed("perm", self.seed, epoch))
            self._cached = (epoch, torch.randperm(self.n_samples, generator=g))
        return self._cached[1]

    def indices(self, step: int) -> torch.Tensor:
        """Sample indices of ``B_step``.

        Args:
            step: Training step, ``>= 1``.

        Returns:
            int64 ``[batch_size]`` (shorter for the last batch of an epoch when ``drop_last=False``).
        """
        if step < 1:
            raise DataError(f"steps start at 1 (step t trains on B_t), got {step}")
        epoch, k = divmod(step - 1, self.steps_per_epoch)
        return self.permutation(epoch)[k * self.batch_size : (k + 1) * self.batch_size].clone()

    def aug_seed(self, step: int) -> int:
        """Deterministic 63-bit augmentation seed of ``B_step``, from ``(seed, step)``."""
        return mix_seed("aug", self.seed, step)

    def epoch_of(self, step: int) -> float:
        """Epochs completed after ``step`` steps, ``step * batch_size / n_samples``."""
        return step * self.batch_size / self.n_samples


def shard_rows(batch_size: int, rank: int, world_size: int) -> slice:
    """The contiguous rows ``[rank * b, (rank + 1) * b)``, ``b = batch_size / world_size``, of one rank."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"need 0 <= rank < world_size, got rank {rank} and world_size {world_size}")
    if batch_size % world_size:
        raise DataError(
            f"batch size {batch_size} does not divide evenly over {world_size} ranks; "
            f"use a multiple of {world_size}"
        )
    per_rank = batch_size // world_size
    return slice(rank * per_rank, (rank + 1) * per_rank)


def shard(indices: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's contiguous chunk of a global batch.

    Args:
        indices: int64 ``[B]`` global batch indices.
        rank: Rank in ``[0, world_size)``.
        world_size: Number of ranks; must divide ``B``.

    Returns:
        int64 ``[B / world_size]``, equal to ``indices[shard_rows(B, rank, world_size)]``.
    """
    return indices[shard_rows(len(indices), rank, world_size)]
