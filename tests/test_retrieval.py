import torch
import torch.nn.functional as F
from torchmetrics.retrieval import RetrievalHitRate

from oneencoder.retrieval import first_relevant_ranks, retrieval_metrics
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
