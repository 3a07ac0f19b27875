"""Recall@K and median rank for cross-modal retrieval where a query may have several relevant items
(an image with five captions: a hit if any of them is in the top K)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def first_relevant_ranks(similarity: Tensor, relevant: Tensor, chunk: int = 1024) -> Tensor:
    """0-based rank of each query's best-scored relevant item.

    similarity, relevant: (queries, gallery). Ties count against the query (pessimistic), so a
    constant similarity never scores a hit by luck. Every query needs at least one relevant item.
    """
    if not bool(relevant.any(dim=1).all()):
        raise ValueError("every query needs at least one relevant gallery item")
    ranks = []
    for start in range(0, similarity.shape[0], chunk):
        sim = similarity[start : start + chunk]
        rel = relevant[start : start + chunk]
        best_relevant = sim.masked_fill(~rel, float("-inf")).max(dim=1, keepdim=True).values
        ranks.append(((sim >= best_relevant) & ~rel).sum(dim=1))
    return torch.cat(ranks)


def recall_at_k(ranks: Tensor, ks: Sequence[int]) -> dict[str, float]:
    out = {f"R@{k}": (ranks < k).float().mean().item() for k in ks}
    out["MedR"] = (ranks.float() + 1).median().item()
    return out


def retrieval_metrics(
    emb_a: Tensor, owner_a: Tensor, emb_b: Tensor, owner_b: Tensor, names: tuple[str, str], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Both directions between two modalities; rows are relevant to each other when owners match.

    Returns keys like "text->image/R@1" and "image->text/MedR".
    """
    similarity = emb_a.float() @ emb_b.float().T
    relevant = owner_a[:, None] == owner_b[None, :]
    a, b = names
    metrics = {}
    for name, value in recall_at_k(first_relevant_ranks(similarity, relevant), ks).items():
        metrics[f"{a}->{b}/{name}"] = value
    for name, value in recall_at_k(first_relevant_ranks(similarity.T, relevant.T), ks).items():
        metrics[f"{b}->{a}/{name}"] = value
    return metrics
