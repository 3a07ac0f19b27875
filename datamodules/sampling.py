"""Training order and per-item draws keyed by (run seed, epoch), so that an epoch's batches do not
depend on what ran before it in the process: a run resumed from a checkpoint, with or without
dataloader workers, sees exactly the batches an uninterrupted run sees."""

from __future__ import annotations

import math
from typing import Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler

from oneencoder.seeding import epoch_seed

DRAW_LIMIT = 2**31 - 1


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields (record index, draw): a shuffled order, and per item an integer that picks its caption
    and seeds its augmentation (a video's random window, an audio crop).

    `epoch` is asked when iteration starts (Lightning creates a resumed run's first iterator before
    it would call a sampler's `set_epoch`). Under DDP, Lightning shards this sampler's order per
    process; every process computes the same order.
    """

    def __init__(self, size: int, epoch: Callable[[], int]) -> None:
        self.size = size
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(epoch_seed(self.epoch(), "data"))
        order = torch.randperm(self.size, generator=generator).tolist()
        draws = torch.randint(0, DRAW_LIMIT, (self.size,), generator=generator).tolist()
        return iter(zip(order, draws))


SourceBatch = tuple[int, tuple[tuple[int, int], ...]]
"""(source index, this process's (record index, draw) keys of that source): one batch to fetch."""


def offered_draws(size: int, repeat: float) -> int:
    """How many draws a source of `size` records offers per epoch with its repeat factor: ceil(size *
    repeat), rounded first so that 10 * 0.3 is 3, not 4."""
    return math.ceil(round(size * repeat, 9))


class BalancedBatchSampler(DistributedSampler):
    """OneLLM's balanced sampling as whole batches: each step's batch holds one source, the sources
    take turns (0, 1, 2, 0, 1, ...), and every source gives an epoch the same number of batches, as
    many as the one with the fewest full global batches offers (a source smaller than one global
    batch gives one partial batch). A source of n records with repeat r offers ceil(n * r) draws:
    shuffled passes over its records, concatenated.

    Yields SourceBatch descriptors, fetched and collated whole by the loader's dataset (so a worker
    builds a whole batch). Under DDP the global batch is `batch_size` * world size records of the
    step's source and each process takes its share (of a partial batch, possibly none); every process computes the same order, keyed by
    (run seed, epoch, source) as EpochSampler's is, and reads its rank and the world size from
    torch.distributed when iterating. It is a DistributedSampler so that Lightning neither wraps nor
    replaces it; `set_epoch` is not used, since `epoch` is asked when iteration starts (see
    EpochSampler).
    """

    def __init__(
        self, sizes: Sequence[int], repeats: Sequence[float], batch_size: int, epoch: Callable[[], int]
    ) -> None:
        # DistributedSampler's own fields describe one process: the real ones are read per iteration.
        super().__init__(range(len(sizes)), num_replicas=1, rank=0)
        self.sizes = list(sizes)
        self.repeats = list(repeats)
        self.batch_size = batch_size
        self.current_epoch = epoch

    @staticmethod
    def _process() -> tuple[int, int]:
        """(rank, world size) of this process; (0, 1) outside an initialised process group."""
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _rounds(self, world_size: int) -> int:
        """Batches per source this epoch."""
        global_batch = self.batch_size * world_size
        return min(max(1, offered_draws(n, r) // global_batch) for n, r in zip(self.sizes, self.repeats))

    def __len__(self) -> int:
        return self._rounds(self._process()[1]) * len(self.sizes)

    def _keys(self, source: int, epoch: int, count: int) -> list[tuple[int, int]]:
        """The first `count` (record index, draw) keys of a source's epoch: shuffled passes, concatenated."""
        size = self.sizes[source]
        count = min(count, offered_draws(size, self.repeats[source]))
        generator = torch.Generator().manual_seed(epoch_seed(epoch, "data", "source", source))
        passes = [torch.randperm(size, generator=generator) for _ in range(math.ceil(count / size))]
        order = torch.cat(passes)[:count].tolist()
        draws = torch.randint(0, DRAW_LIMIT, (count,), generator=generator).tolist()
        return list(zip(order, draws))

    def __iter__(self) -> Iterator[SourceBatch]:
        rank, world_size = self._process()
        epoch = self.current_epoch()
        global_batch = self.batch_size * world_size
        rounds = self._rounds(world_size)
        keys = [self._keys(source, epoch, rounds * global_batch) for source in range(len(self.sizes))]
        for step in range(rounds):
            for source, source_keys in enumerate(keys):
                batch = source_keys[step * global_batch : (step + 1) * global_batch]
                yield source, tuple(batch[rank::world_size])


def loader_generator() -> torch.Generator:
    """A DataLoader's own generator (worker base seeds): creating an iterator must not consume the
    global RNG, which the model's dropout uses."""
    return torch.Generator().manual_seed(epoch_seed(0, "loader"))
