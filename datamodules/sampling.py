"""Training order and per-item draws keyed by (run seed, epoch), so that an epoch's batches do not
depend on what ran before it in the process: a run resumed from a checkpoint, with or without
dataloader workers, sees exactly the batches an uninterrupted run sees."""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch.utils.data import Sampler

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


def loader_generator() -> torch.Generator:
    """A DataLoader's own generator (worker base seeds): creating an iterator must not consume the
    global RNG, which the model's dropout uses."""
    return torch.Generator().manual_seed(epoch_seed(0, "loader"))
