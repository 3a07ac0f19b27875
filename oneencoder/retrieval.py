"""Recall@K and median rank for cross-modal retrieval where a query may have several relevant items
(an image with five captions: a hit if any of them is in the top K), and what a random ranking
scores on the same queries (the chance level printed beside each figure). Rankings are computed
from embeddings and owners a chunk of queries at a time, so that their working memory stays within
MEMORY_BUDGET whatever the numbers of queries and gallery items."""

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


# Working memory of one chunk of rankings per query x gallery cell: the similarities (float32, 4
# bytes), the relevance mask (1) and the relevant scores picked out to find the best (4), with room
# for the allocator (benchmarks/eval_memory.py measured 8.3 to 9.1). Module globals, read at each
# call, so that a test can shrink them.
MEMORY_BUDGET = 1 << 30
BYTES_PER_CELL = 12


def rows_per_chunk(columns: int, bytes_per_cell: int = BYTES_PER_CELL) -> int:
    """How many rows of a (rows, columns) score matrix fit in MEMORY_BUDGET at `bytes_per_cell`: at
    100k gallery items, 894 queries ranked at once."""
    return max(1, MEMORY_BUDGET // (bytes_per_cell * max(1, columns)))


def first_relevant_ranks(
    queries: Tensor, query_owners: Tensor, gallery: Tensor, gallery_owners: Tensor, chunk: int | None = None
) -> Tensor:
    """(queries,) 0-based rank of each query's best-scored relevant gallery item, by inner product.

    queries: (q, d), gallery: (n, d); a gallery item is relevant to a query when their owners (q,)
    and (n,) are equal. Ties count against the query (pessimistic), so a constant similarity never
    scores a hit by luck. Every query needs at least one relevant item, and every similarity must be
    finite (NaN compares false with everything: it would rank first). Queries are ranked `chunk` at
    a time (default: as many as fit in MEMORY_BUDGET), so the q x n similarity matrix never exists
    whole: 100k queries against 100k items took 0.7 GiB instead of 50 GB. A chunk's similarities are
    one matrix product, as the whole matrix's were, except that a BLAS may sum a product of a few
    rows in another order (last-bit differences: at most near-exact ties could rank otherwise).
    """
    if not bool(torch.isin(query_owners, gallery_owners).all()):
        raise ValueError("every query needs at least one relevant gallery item")
    queries, gallery = queries.float(), gallery.float()
    chunk = chunk or rows_per_chunk(len(gallery))
    ranks, non_finite = [], 0
    for start in range(0, len(queries), chunk):
        sim = queries[start : start + chunk] @ gallery.T
        low, high = torch.aminmax(sim)  # NaN and infinities reach these: no full-size check needed
        if not bool(torch.isfinite(low) & torch.isfinite(high)):
            non_finite += int((~torch.isfinite(sim)).sum())
        elif not non_finite:
            ranks.append(_ranks_in_chunk(sim, query_owners[start : start + chunk, None] == gallery_owners[None, :]))
    if non_finite:
        raise ValueError(
            f"{non_finite} of {len(queries) * len(gallery)} similarities are NaN or infinite: rankings of them"
            " would be meaningless; check the embeddings with oneencoder.retrieval.check_finite"
        )
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long, device=queries.device)


def _ranks_in_chunk(sim: Tensor, relevant: Tensor) -> Tensor:
    """(rows,) how many irrelevant items score at least each row's best relevant one. `sim` (rows, n)
    is overwritten, so that ranking needs no second matrix of its size: relevant items' scores become
    -inf (the best relevant score is finite: nothing at -inf reaches it), then 1.0 where an item
    reaches that score and 0.0 elsewhere, summed in float32 (exact to 2^24 items; float64 beyond),
    where counting a bool matrix would first widen it to 8 bytes a cell."""
    best_relevant = torch.where(relevant, sim, float("-inf")).amax(dim=1, keepdim=True)
    sim.masked_fill_(relevant, float("-inf")).ge_(best_relevant)
    return sim.sum(dim=1, dtype=torch.float32 if sim.shape[1] <= 1 << 24 else torch.float64).long()


def relevant_counts(query_owners: Tensor, gallery_owners: Tensor) -> Tensor:
    """(queries,) how many gallery items share each query's owner: the counts `chance_levels` takes,
    without a queries x gallery mask."""
    owners, counts = torch.unique(gallery_owners, return_counts=True)
    position = torch.searchsorted(owners, query_owners).clamp(max=len(owners) - 1)
    return torch.where(owners[position] == query_owners, counts[position], 0)


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
    metrics = {}
    for name, value in recall_at_k(first_relevant_ranks(emb_a, owner_a, emb_b, owner_b), ks).items():
        metrics[f"{a}->{b}/{name}"] = value
    for name, value in recall_at_k(first_relevant_ranks(emb_b, owner_b, emb_a, owner_a), ks).items():
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
