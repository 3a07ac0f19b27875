"""Retrieval between two modalities as a torchmetrics Metric, so that embeddings from every DDP
process are gathered (variable sizes included) before ranking."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from oneencoder.retrieval import retrieval_metrics


class PairRetrieval(Metric):
    """Accumulates (embeddings, owners) of two modalities; `compute` ranks each against the other.

    Owners are (record index, row within record); rows repeated by a distributed sampler's padding
    are dropped by owner before ranking. Every process must update with every batch, an empty one
    as (0, d) and (0, 2) tensors, so that the states it gathers have the same number of dimensions.
    """

    full_state_update = False

    def __init__(self, names: tuple[str, str], ks: Sequence[int] = (1, 5, 10)) -> None:
        super().__init__()
        self.names = names
        self.ks = tuple(ks)
        for side in ("a", "b"):
            self.add_state(f"emb_{side}", default=[], dist_reduce_fx="cat")
            self.add_state(f"owner_{side}", default=[], dist_reduce_fx="cat")

    def update(self, emb_a: Tensor, owner_a: Tensor, emb_b: Tensor, owner_b: Tensor) -> None:
        self.emb_a.append(emb_a.detach().float())
        self.owner_a.append(owner_a)
        self.emb_b.append(emb_b.detach().float())
        self.owner_b.append(owner_b)

    def compute(self) -> dict[str, float]:
        """Every metric, or none when no process kept a row (all records skipped): every process
        holds the same gathered rows here, so all of them log the same names."""
        emb_a, owner_a = _unique_rows(_cat(self.emb_a), _cat(self.owner_a))
        emb_b, owner_b = _unique_rows(_cat(self.emb_b), _cat(self.owner_b))
        if not len(emb_a) or not len(emb_b):
            return {}
        return retrieval_metrics(emb_a, owner_a[:, 0], emb_b, owner_b[:, 0], self.names, self.ks)


def _cat(state: list[Tensor] | Tensor) -> Tensor:
    return torch.cat(state) if isinstance(state, list) else state


def _unique_rows(embeddings: Tensor, owners: Tensor) -> tuple[Tensor, Tensor]:
    unique, inverse = torch.unique(owners, dim=0, return_inverse=True)
    first = torch.full((len(unique),), len(owners), dtype=torch.long, device=owners.device)
    first.scatter_reduce_(0, inverse, torch.arange(len(owners), device=owners.device), reduce="amin")
    return embeddings[first], unique
