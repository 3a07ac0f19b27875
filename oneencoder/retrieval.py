"""Recall@K and median rank for cross-modal retrieval where a query may have several relevant items
(an image with five captions: a hit if any of them is in the top K), and what a random ranking
scores on the same queries (the chance level printed beside each figure)."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import torch
from torch import Tensor


class NonFiniteEmbeddingError(ValueError):
    """Embeddings with NaN or infinite values: every comparison with NaN is false, so ranking them
    would put every query's relevant item first and report a perfect score."""


def check_finite(embeddings: Tensor, modality: str, where: str = "") -> None:
    """Raise NonFiniteEmbeddingError naming the modality and how many rows are not finite.

    embeddings: (items, dim). `where` says what was embedded (a manifest and split), for the message.
    """
    bad = int((~torch.isfinite(embeddings)).any(dim=-1).sum())
    if bad:
        place = f" on {where}" if where else ""
        raise NonFiniteEmbeddingError(
            f"{bad} of {len(embeddings)} {modality} embeddings{place} hold NaN or infinite values, so their"
            " retrieval scores would mean nothing. Check the model's weights for NaN (a diverged run: lower"
            " the learning rate or use an earlier checkpoint) and the frozen encoder's outputs for these items"
        )


def first_relevant_ranks(similarity: Tensor, relevant: Tensor, chunk: int = 1024) -> Tensor:
    """0-based rank of each query's best-scored relevant item.

    similarity, relevant: (queries, gallery). Ties count against the query (pessimistic), so a
    constant similarity never scores a hit by luck. Every query needs at least one relevant item,
    and every similarity must be finite (NaN compares false with everything: it would rank first).
    """
    if not bool(relevant.any(dim=1).all()):
        raise ValueError("every query needs at least one relevant gallery item")
    non_finite = int((~torch.isfinite(similarity)).sum())
    if non_finite:
        raise ValueError(
            f"{non_finite} of {similarity.numel()} similarities are NaN or infinite: rankings of them would"
            " be meaningless; check the embeddings with oneencoder.retrieval.check_finite"
        )
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

    Returns keys like "text->image/R@1" and "image->text/MedR". Raises NonFiniteEmbeddingError
    when either side holds NaN or infinite values.
    """
    a, b = names
    check_finite(emb_a, a)
    check_finite(emb_b, b)
    similarity = emb_a.float() @ emb_b.float().T
    relevant = owner_a[:, None] == owner_b[None, :]
    metrics = {}
    for name, value in recall_at_k(first_relevant_ranks(similarity, relevant), ks).items():
        metrics[f"{a}->{b}/{name}"] = value
    for name, value in recall_at_k(first_relevant_ranks(similarity.T, relevant.T), ks).items():
        metrics[f"{b}->{a}/{name}"] = value
    return metrics


def chance_levels(relevant_counts: Sequence[int], gallery_size: int, ks: Sequence[int]) -> dict[str, float]:
    """What a random ranking scores on these queries (one count of relevant items per query).

    R@K is the average over queries of P(first relevant rank <= K). MedR is the median of the
    ranks of all queries together: the first rank where that same average reaches 1/2. (The median
    of each query's own median is not it when queries have different numbers of relevant items.)
    A K beyond the gallery is the whole gallery: always a hit.
    """
    hit_within = _mean_hit_probabilities(relevant_counts, gallery_size)  # [k] = P(rank <= k), k = 0..N
    chance = {f"R@{k}": float(hit_within[min(k, gallery_size)]) for k in ks}
    # The tolerance keeps an exact 1/2 (one relevant item among 10 within 5) from rounding below it.
    chance["MedR"] = float(torch.nonzero(hit_within >= 0.5 - 1e-9)[0, 0])
    return chance


def _mean_hit_probabilities(relevant_counts: Sequence[int], gallery_size: int) -> Tensor:
    """(gallery_size + 1,) float64: at k, the average over queries of P(first relevant rank <= k).

    A query with r relevant items among N misses the top k with probability C(N-r, k) / C(N, k), the
    product over i < k of (N-r-i) / (N-i): as floats, so large galleries need no huge integers.
    """
    counts = Counter(relevant_counts)
    if not counts or min(counts) < 1 or max(counts) > gallery_size:
        raise ValueError(f"every query needs 1 to {gallery_size} relevant items (got counts {sorted(counts)})")
    taken = torch.arange(gallery_size, dtype=torch.float64)
    hit = torch.zeros(gallery_size + 1, dtype=torch.float64)
    for r, queries in counts.items():
        miss = torch.cumprod(((gallery_size - r - taken) / (gallery_size - taken)).clamp(min=0), dim=0)
        hit[1:] += queries * (1 - miss)
    return hit / len(relevant_counts)
