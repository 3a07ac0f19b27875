import math

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.retrieval import RetrievalHitRate

from oneencoder.retrieval import (
    NonFiniteEmbeddingError,
    chance_levels,
    first_relevant_ranks,
    recall_at_k,
    retrieval_metrics,
)
from stages.retrieval_metric import PairRetrieval


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
    sim = torch.tensor([[0.9, 0.5, 0.7, 0.1]])
    relevant = torch.tensor([[False, True, False, True]])
    assert first_relevant_ranks(sim, relevant).tolist() == [2]


def test_metric_drops_rows_repeated_by_distributed_padding():
    emb = F.normalize(torch.randn(4, 8), dim=-1)
    owners = torch.stack([torch.arange(4), torch.zeros(4, dtype=torch.long)], dim=1)
    metric = PairRetrieval(("image", "text"), ks=(1,))
    metric.update(emb, owners, emb, owners)
    metric.update(emb[:1], owners[:1], emb[:1], owners[:1])  # the sampler's padding repeats record 0
    assert metric.compute()["image->text/R@1"] == 1.0


def test_nan_similarities_are_refused_not_ranked_first():
    # Every comparison with NaN is false: unchecked, each query's relevant item would rank first.
    with pytest.raises(ValueError, match="16 of 16 similarities are NaN or infinite"):
        first_relevant_ranks(torch.full((4, 4), float("nan")), torch.eye(4, dtype=torch.bool))


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
    relevant = torch.arange(gallery)[None, :] < torch.tensor(counts)[:, None]
    generator = torch.Generator().manual_seed(0)
    ranks = first_relevant_ranks(torch.rand(len(counts), gallery, generator=generator), relevant)
    simulated = recall_at_k(ranks, (1, 5, 10))
    chance = chance_levels(counts, gallery, (1, 5, 10))
    assert abs(chance["MedR"] - simulated["MedR"]) <= 1 and chance["MedR"] > 20
    for k in (1, 5, 10):
        assert chance[f"R@{k}"] == pytest.approx(simulated[f"R@{k}"], abs=0.01)


def test_chance_of_a_large_gallery_needs_no_huge_integers():
    chance = chance_levels([20] * 3 + [1], gallery_size=100000, ks=(1,))
    assert chance["R@1"] == pytest.approx((3 * 20 / 100000 + 1 / 100000) / 4)
