"""BatchSampler: a pure function of (seed, step); every epoch a permutation; sharding."""

from __future__ import annotations

import pytest
import torch

from trajlab.data import BatchSampler, DataError, shard, shard_rows


def test_each_epoch_is_a_permutation() -> None:
    s = BatchSampler(n_samples=103, batch_size=10, seed=5)
    assert s.steps_per_epoch == 10  # the 3 leftover samples are dropped
    epochs = []
    for e in range(3):
        seen = torch.cat([s.indices(t) for t in range(e * 10 + 1, e * 10 + 11)])
        assert seen.dtype == torch.int64 and len(seen) == 100
        assert len(set(seen.tolist())) == 100 and int(seen.min()) >= 0 and int(seen.max()) < 103
        assert torch.equal(seen, s.permutation(e)[:100])
        epochs.append(seen)
    assert not torch.equal(epochs[0], epochs[1])


def test_indices_are_a_pure_function_of_seed_and_step() -> None:
    a = BatchSampler(50, 8, seed=1)
    sequential = [a.indices(t) for t in range(1, 30)]
    # A fresh sampler asked out of order (random access, as when rebuilding a batch later) agrees.
    b = BatchSampler(50, 8, seed=1)
    for t in (29, 3, 17, 1, 12):
        assert torch.equal(b.indices(t), sequential[t - 1])
    c = BatchSampler(50, 8, seed=2)
    assert not torch.equal(c.indices(1), sequential[0])
    # Returned tensors are copies: mutating one does not corrupt the cached permutation.
    b.indices(1).fill_(0)
    assert torch.equal(b.indices(1), sequential[0])


def test_reference_layout() -> None:
    # B_t = perm_e[k*B:(k+1)*B] with e = (t-1)//S and k = (t-1)%S.
    s = BatchSampler(20, 6, seed=0)
    assert s.steps_per_epoch == 3
    for t in range(1, 10):
        e, k = divmod(t - 1, 3)
        assert torch.equal(s.indices(t), s.permutation(e)[k * 6 : (k + 1) * 6])


def test_keep_last() -> None:
    s = BatchSampler(20, 6, seed=0, drop_last=False)
    assert s.steps_per_epoch == 4
    assert [len(s.indices(t)) for t in range(1, 6)] == [6, 6, 6, 2, 6]
    assert sorted(torch.cat([s.indices(t) for t in range(1, 5)]).tolist()) == list(range(20))


def test_aug_seed_and_epoch_of() -> None:
    s = BatchSampler(100, 10, seed=3)
    seeds = [s.aug_seed(t) for t in range(1, 200)]
    assert seeds == [BatchSampler(100, 10, seed=3).aug_seed(t) for t in range(1, 200)]
    assert len(set(seeds)) == len(seeds) and all(0 <= x < 2**63 for x in seeds)
    assert s.aug_seed(1) != BatchSampler(100, 10, seed=4).aug_seed(1)
    assert s.epoch_of(25) == 2.5 and s.epoch_of(0) == 0.0


def test_sampler_errors() -> None:
    with pytest.raises(DataError, match="steps start at 1"):
        BatchSampler(10, 2, 0).indices(0)
    with pytest.raises(DataError, match="batch_size 11 exceeds the 10 samples"):
        BatchSampler(10, 11, 0)


def test_shard() -> None:
    idx = torch.arange(12) * 3
    parts = [shard(idx, r, 4) for r in range(4)]
    assert torch.equal(torch.cat(parts), idx)
    assert torch.equal(parts[2], idx[shard_rows(12, 2, 4)]) and torch.equal(parts[2], idx[6:9])
    with pytest.raises(DataError, match="batch size 12 does not divide evenly over 5 ranks"):
        shard(idx, 0, 5)
    with pytest.raises(DataError, match="need 0 <= rank < world_size"):
        shard(idx, 4, 4)
