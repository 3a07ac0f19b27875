import math

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.retrieval import RetrievalHitRate

import oneencoder.retrieval
from oneencoder.retrieval import (
    NonFiniteEmbeddingError,
    chance_levels,
    first_relevant_ranks,
    recall_at_k,
    relevant_counts,
    retrieval_metrics,
    rows_per_chunk,
)
from stages.retrieval_metric import PairRetrieval


def full_matrix_ranks(queries, query_owners, gallery, gallery_owners):
    """The ranking as it was before chunking: the whole similarity matrix and relevance mask at once."""
    similarity = queries.float() @ gallery.float().T
    relevant = query_owners[:, None] == gallery_owners[None, :]
    best_relevant = similarity.masked_fill(~relevant, float("-inf")).max(dim=1, keepdim=True).values
    return ((similarity >= best_relevant) & ~relevant).sum(dim=1)


def small_integer_vectors(rows, dim, generator):
    """Vectors of -2..2: their inner products are exact whatever the summation order, and tie often."""
    return torch.randint(-2, 3, (rows, dim), generator=generator).float()


@pytest.mark.parametrize("chunk", [1, 7, 1000, None])
def test_chunked_ranks_equal_the_full_matrix_with_ties_and_several_relevant_items(chunk):
    generator = torch.Generator().manual_seed(0)
    query_owners = torch.randint(0, 40, (90,), generator=generator)
    gallery_owners = torch.cat([torch.unique(query_owners), torch.randint(0, 60, (150,), generator=generator)])
    queries = small_integer_vectors(90, 3, generator)
    gallery = small_integer_vectors(len(gallery_owners), 3, generator)
    assert relevant_counts(query_owners, gallery_owners).max() > 1  # several relevant items for some queries
    similarity = queries @ gallery.T
    assert (similarity[:, :, None] == similarity[:, None, :]).sum() > 10 * similarity.numel()  # many ties
    expected = full_matrix_ranks(queries, query_owners, gallery, gallery_owners)
    assert torch.equal(first_relevant_ranks(queries, query_owners, gallery, gallery_owners, chunk), expected)
    reverse = full_matrix_ranks(gallery, gallery_owners, queries, query_owners)
    keep = torch.isin(gallery_owners, query_owners)
    got = first_relevant_ranks(gallery[keep], gallery_owners[keep], queries, query_owners, chunk)
    assert torch.equal(got, reverse[keep])


def test_chunked_ranks_equal_the_full_matrix_on_unit_vectors_with_duplicates():
    generator = torch.Generator().manual_seed(1)
    gallery = F.normalize(torch.randn(200, 16, generator=generator), dim=-1)
    gallery = torch.cat([gallery, gallery[:50]])  # exact ties between relevant and other items
    gallery_owners = torch.cat([torch.arange(200), torch.arange(50) + 300])
    queries = F.normalize(gallery[:120] + 0.5 * torch.randn(120, 16, generator=generator), dim=-1)
    query_owners = torch.arange(120)
    expected = full_matrix_ranks(queries, query_owners, gallery, gallery_owners)
    for chunk in (120, 500, None):  # whole products: the same BLAS sums as the full matrix
        assert torch.equal(first_relevant_ranks(queries, query_owners, gallery, gallery_owners, chunk), expected)


def test_chunks_are_sized_from_the_memory_budget(monkeypatch):
    assert rows_per_chunk(100_000) * 100_000 * oneencoder.retrieval.BYTES_PER_CELL <= oneencoder.retrieval.MEMORY_BUDGET
    assert rows_per_chunk(10**12) == 1
    monkeypatch.setattr(oneencoder.retrieval, "MEMORY_BUDGET", 3 * oneencoder.retrieval.BYTES_PER_CELL * 50)
    assert rows_per_chunk(50) == 3


def test_relevant_counts_equal_the_mask_s_row_sums():
    generator = torch.Generator().manual_seed(2)
    query_owners = torch.randint(0, 30, (100,), generator=generator)
    gallery_owners = torch.randint(0, 20, (70,), generator=generator)
    mask = query_owners[:, None] == gallery_owners[None, :]
    assert torch.equal(relevant_counts(query_owners, gallery_owners), mask.sum(1))


def test_identical_pairs_reach_recall_at_1_of_one():
    emb = F.normalize(torch.randn(50, 16), dim=-1)
    owners = torch.arange(50)
    metrics = retrieval_metrics(emb, owners, emb.clone(), owners, ("image", "text"))
    assert metrics["image->text/R@1"] == 1.0 and metrics["text->image/R@1"] == 1.0
    assert metrics["text->image/MedR"] == 1.0


def test_constant_similarity_scores_no_lucky_hits():
    emb = torch.ones(10, 4)
    metrics = retrieval_metrics(emb, torch.arange(10), emb, torch.arange(10), ("a", "b"))
    assert metrics["a->b/R@1"] == 0.0


def test_any_caption_counts_and_matches_torchmetrics_hit_rate():
    torch.manual_seed(0)
    images = F.normalize(torch.randn(20, 8), dim=-1)
    captions = F.normalize(torch.randn(60, 8), dim=-1)
    owner = torch.arange(20).repeat_interleave(3)
    metrics = retrieval_metrics(images, torch.arange(20), captions, owner, ("image", "text"), ks=(1, 5))
    sim = images @ captions.T
    for k in (1, 5):
        reference = RetrievalHitRate(top_k=k)(
            sim.flatten(), (torch.arange(20)[:, None] == owner[None, :]).flatten(),
            indexes=torch.arange(20).repeat_interleave(60),
        )
        assert abs(metrics[f"image->text/R@{k}"] - reference.item()) < 1e-6


def test_rank_is_position_of_best_relevant_item():
    # A one-hot gallery makes each query's similarities its own coordinates.
    sim = torch.tensor([[0.9, 0.5, 0.7, 0.1]])
    assert first_relevant_ranks(sim, torch.tensor([0]), torch.eye(4), torch.tensor([1, 0, 2, 0])).tolist() == [2]


def test_a_query_without_relevant_items_is_refused():
    with pytest.raises(ValueError, match="every query needs at least one relevant gallery item"):
        first_relevant_ranks(torch.eye(2), torch.tensor([0, 5]), torch.eye(2), torch.tensor([0, 1]))


def test_metric_drops_rows_repeated_by_distributed_padding():
    emb = F.normalize(torch.randn(4, 8), dim=-1)
    owners = torch.stack([torch.arange(4), torch.zeros(4, dtype=torch.long)], dim=1)
    metric = PairRetrieval(("image", "text"), ks=(1,))
    metric.update(emb, owners, emb, owners)
    metric.update(emb[:1], owners[:1], emb[:1], owners[:1])  # the sampler's padding repeats record 0
    assert metric.compute()["image->text/R@1"] == 1.0


def test_nan_similarities_are_refused_not_ranked_first():
    # Every comparison with NaN is false: unchecked, each query's relevant item would rank first.
    for chunk in (1, None):
        with pytest.raises(ValueError, match="16 of 16 similarities are NaN or infinite"):
            first_relevant_ranks(torch.full((4, 4), float("nan")), torch.arange(4), torch.eye(4), torch.arange(4),
                                 chunk)


def test_non_finite_embeddings_name_the_modality_and_how_many():
    emb = F.normalize(torch.randn(6, 8), dim=-1)
    broken = emb.clone()
    broken[[1, 4], 0] = float("nan")
    broken[5, 2] = float("inf")
    with pytest.raises(NonFiniteEmbeddingError, match="3 of 6 audio embeddings hold NaN or infinite"):
        retrieval_metrics(emb, torch.arange(6), broken, torch.arange(6), ("text", "audio"))


def test_validation_metric_refuses_nan_embeddings():
    metric = PairRetrieval(("image", "text"), ks=(1,))
    owners = torch.stack([torch.arange(4), torch.zeros(4, dtype=torch.long)], dim=1)
    metric.update(torch.full((4, 8), float("nan")), owners, F.normalize(torch.randn(4, 8), dim=-1), owners)
    with pytest.raises(NonFiniteEmbeddingError, match="4 of 4 image embeddings"):
        metric.compute()


def test_chance_with_one_relevant_item_is_k_over_n_and_the_middle_rank():
    chance = chance_levels([1] * 10, gallery_size=9, ks=(1, 5))
    assert chance["R@1"] == pytest.approx(1 / 9)
    assert chance["R@5"] == pytest.approx(5 / 9)
    assert chance["MedR"] == 5
    assert chance_levels([1], gallery_size=10, ks=(1,))["MedR"] == 5  # exactly half within 5


def test_chance_with_several_relevant_items_matches_counting():
    # 2 relevant among 6, top 2: hit unless both top items are among the 4 others.
    assert chance_levels([2], 6, (2,))["R@2"] == pytest.approx(1 - math.comb(4, 2) / math.comb(6, 2))
    # The first of 3 relevant among 9 sits at rank 1 with probability 1/3, within 2 with 7/12 > 1/2.
    assert chance_levels([3], 9, (1,))["MedR"] == 2


def test_chance_for_k_beyond_the_gallery_is_a_certain_hit():
    assert chance_levels([1, 1, 1, 1], gallery_size=4, ks=(1, 10))["R@10"] == 1.0


def test_chance_matches_random_rankings_when_queries_have_different_numbers_of_relevant_items():
    # Half the queries with 1 relevant item, half with 5, among 100: the median of each kind's own
    # median (13) is not the median rank of the queries together (about 24).
    counts = [1, 5] * 10000
    gallery = 100
    # A one-hot gallery makes the random queries their own similarities: item 0 belongs to the queries
    # with one relevant item, items 1-5 to those with five, the others to no query.
    gallery_owners = torch.tensor([1] + [5] * 5 + list(range(6, gallery)))
    generator = torch.Generator().manual_seed(0)
    queries = torch.rand(len(counts), gallery, generator=generator)
    ranks = first_relevant_ranks(queries, torch.tensor(counts), torch.eye(gallery), gallery_owners)
    simulated = recall_at_k(ranks, (1, 5, 10))
    chance = chance_levels(counts, gallery, (1, 5, 10))
    assert abs(chance["MedR"] - simulated["MedR"]) <= 1 and chance["MedR"] > 20
    for k in (1, 5, 10):
        assert chance[f"R@{k}"] == pytest.approx(simulated[f"R@{k}"], abs=0.01)


def test_chance_of_a_large_gallery_needs_no_huge_integers():
    chance = chance_levels([20] * 3 + [1], gallery_size=100000, ks=(1,))
    assert chance["R@1"] == pytest.approx((3 * 20 / 100000 + 1 / 100000) / 4)


def test_metrics_and_the_training_metric_are_unchanged_by_small_chunks(monkeypatch):
    generator = torch.Generator().manual_seed(3)
    images, owners_a = small_integer_vectors(30, 4, generator), torch.arange(30)
    captions, owners_b = small_integer_vectors(90, 4, generator), torch.arange(30).repeat(3)
    expected = {}
    for (a, oa, b, ob, name) in [(images, owners_a, captions, owners_b, "image->text"),
                                 (captions, owners_b, images, owners_a, "text->image")]:
        for key, value in recall_at_k(full_matrix_ranks(a, oa, b, ob), (1, 5, 10)).items():
            expected[f"{name}/{key}"] = value
    # 4 queries at a time against the 90 captions
    monkeypatch.setattr(oneencoder.retrieval, "MEMORY_BUDGET", oneencoder.retrieval.BYTES_PER_CELL * 90 * 4)
    assert retrieval_metrics(images, owners_a, captions, owners_b, ("image", "text")) == expected
    metric = PairRetrieval(("image", "text"))
    metric.update(images, torch.stack([owners_a, torch.zeros(30, dtype=torch.long)], 1),
                  captions, torch.stack([owners_b, torch.arange(90)], 1))
    assert metric.compute() == expected
