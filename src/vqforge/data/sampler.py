"""The training stream's batch order: endless batches of (epoch, sample index) keys for one rank.

Epoch e visits every sample once in the order `epoch_order(N, seed, e)` (a seeded permutation, or 0..N−1 with
`shuffle: false`), the same on every rank. Rank r of W takes positions r, r + W, r + 2W, ... of that order, so the
shards are disjoint and together hold every sample exactly once per epoch (nothing dropped, nothing padded). Each
rank strings its shards of epochs 0, 1, 2, ... into one endless sequence and cuts it into batches of `batch_size`;
a batch may span two epochs. Batch b is a pure function of (N, seed, rank, W, shuffle, b), which is what makes the
stream resumable at any batch.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ..errors import DataError
from .dataset import epoch_order


class ShardedBatchSampler:
    """Endless batches of (epoch, index) keys for one rank (see the module docstring for the scheme)."""

    def __init__(self, num_samples: int, batch_size: int, *, seed: int, rank: int, world_size: int, shuffle: bool,
                 start_batch: int = 0):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        if num_samples < world_size:
            raise DataError(f"data.train: {num_samples} training samples cannot be shared among {world_size} "
                            "processes (each needs at least one)\n  fix: add data or run fewer processes")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.start_batch = start_batch
        self.shard_size = len(range(rank, num_samples, world_size))
        self._order_epoch = -1
        self._order = np.arange(0)

    def locate(self, sample_position: int) -> tuple[int, int]:
        """(epoch, position within this rank's shard of that epoch) of the rank's n-th sample."""
        return divmod(sample_position, self.shard_size)

    def _order_for(self, epoch: int) -> np.ndarray:
        if epoch != self._order_epoch:
            self._order = epoch_order(self.num_samples, self.seed, epoch, self.shuffle)
            self._order_epoch = epoch
        return self._order

    def keys(self, batch: int) -> list[tuple[int, int]]:
        out = []
        for p in range(batch * self.batch_size, (batch + 1) * self.batch_size):
            epoch, offset = self.locate(p)
            out.append((epoch, int(self._order_for(epoch)[self.rank + offset * self.world_size])))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        b = self.start_batch
        while True:
            yield self.keys(b)
            b += 1
