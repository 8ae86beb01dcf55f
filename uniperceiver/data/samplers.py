"""Deterministic, infinite, rank-sharded samplers (pure index arithmetic, testable without a process group)."""
from __future__ import annotations

import itertools
from typing import Iterator, List

import torch
from torch.utils.data import Sampler


def shard_indices(size: int, rank: int, world_size: int) -> range:
    """Positions of one epoch's permutation that ``rank`` reads: ``rank, rank + world, ...``."""
    return range(rank, size, world_size)


class InfiniteShardedSampler(Sampler[int]):
    """Epoch e yields ``randperm(size, seed + e)[rank::world_size]`` (or ``arange`` without shuffle), forever.

    ``start`` skips that many indices of THIS rank's stream (resume), in O(1).  Every rank uses the same
    seed, so the ranks split each epoch's permutation without overlap.
    """

    def __init__(self, size: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start: int = 0):
        if size <= 0:
            raise ValueError("InfiniteShardedSampler needs a non-empty dataset")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.size, self.shuffle, self.seed = size, shuffle, int(seed)
        self.rank, self.world_size, self.start = rank, world_size, int(start)
        self.per_epoch = len(shard_indices(size, rank, world_size))
        if self.per_epoch == 0:
            # fewer samples than ranks: every rank reads the whole (shuffled) set
            self.rank, self.world_size = 0, 1
            self.per_epoch = size

    def epoch_indices(self, epoch: int) -> List[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + epoch)
            perm = torch.randperm(self.size, generator=g).tolist()
        else:
            perm = list(range(self.size))
        return perm[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.start, self.per_epoch)
        for e in itertools.count(epoch):
            yield from self.epoch_indices(e)[offset:]
            offset = 0


def subset_indices(size: int, percentage: float, seed: int = 0) -> List[int]:
    """A deterministic ``percentage`` of ``range(size)`` (at least one), sorted; independent of the run seed."""
    if percentage >= 1.0:
        return list(range(size))
    if percentage <= 0:
        raise ValueError(f"DATALOADER.DATA_PERCENTAGE must be > 0, got {percentage}")
    n = max(1, int(round(size * percentage)))
    g = torch.Generator()
    g.manual_seed(seed)
    return sorted(torch.randperm(size, generator=g)[:n].tolist())
