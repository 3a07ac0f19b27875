"""Randomness keyed by (run seed, epoch): a run resumed from a checkpoint draws exactly what an
uninterrupted run draws, whatever happened in the process before (sanity checks, dataloader workers)."""

from __future__ import annotations

import hashlib
import os


def run_seed() -> int:
    """The seed `seed_everything` (LightningCLI's `seed_everything:`) set for this run, or 0."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def epoch_seed(epoch: int, *salt: object) -> int:
    """A 63-bit seed for one epoch of this run; `salt` separates streams (data order, a rank's dropout)."""
    key = ":".join(str(part) for part in (run_seed(), epoch, *salt))
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") >> 1
