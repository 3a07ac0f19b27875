"""Retrieval between all modality pairs, and the chance levels printed beside it."""

import math

import pytest
import torch

from stages.evaluate import Embedded, Evaluation, chance_levels, pair_result


def test_chance_with_one_relevant_item_is_k_over_n_and_the_middle_rank():
    chance = chance_levels([1] * 10, gallery_size=9, ks=(1, 5))
    assert chance["R@1"] == pytest.approx(1 / 9)
    assert chance["R@5"] == pytest.approx(5 / 9)
    assert chance["MedR"] == 5


def test_chance_with_several_relevant_items_matches_counting():
    # 2 relevant among 6, top 2: hit unless both top items are among the 4 others.
    assert chance_levels([2], 6, (2,))["R@2"] == pytest.approx(1 - math.comb(4, 2) / math.comb(6, 2))
    # The first of 3 relevant among 9 sits at rank 1 with probability 1/3, within 2 with 7/12 > 1/2.
    assert chance_levels([3], 9, (1,))["MedR"] == 2


def test_planted_identical_pairs_score_r1_of_one_in_both_directions():
    embeddings = torch.nn.functional.normalize(torch.randn(20, 8), dim=-1)
    images = Embedded(embeddings, torch.arange(20))
    captions = Embedded(embeddings.repeat(2, 1), torch.arange(20).repeat(2))  # two captions per image
    forward = pair_result("text", "image", captions, images, (1, 5))
    backward = pair_result("image", "text", images, captions, (1, 5))
    assert forward.metrics["R@1"] == backward.metrics["R@1"] == 1.0
    assert (forward.queries, forward.gallery_size) == (40, 20)
    assert backward.chance["R@1"] == pytest.approx(2 / 40)


def test_pairs_use_only_records_both_modalities_have():
    embeddings = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    audio = Embedded(embeddings[:4], torch.tensor([0, 1, 2, 3]))
    video = Embedded(embeddings[2:], torch.tensor([2, 3, 4, 5]))
    result = pair_result("audio", "video", audio, video, (1,))
    assert (result.queries, result.gallery_size, result.metrics["R@1"]) == (2, 2, 1.0)


def test_table_marks_pairs_never_trained_together():
    embeddings = torch.nn.functional.normalize(torch.randn(5, 4), dim=-1)
    rows = Embedded(embeddings, torch.arange(5))
    evaluation = Evaluation("m.jsonl", "test", trained={frozenset(("audio", "text"))})
    evaluation.results = [pair_result("audio", "text", rows, rows, (1,)), pair_result("audio", "image", rows, rows, (1,))]
    table = evaluation.markdown()
    assert "| audio->text | 1.000 (0.200) | 1.0 (3.0) | 5 | 5 | yes |" in table
    assert "| audio->image | 1.000 (0.200) | 1.0 (3.0) | 5 | 5 | no (transitive) |" in table
    data = evaluation.to_dict()
    assert data["metrics"]["audio->image/R@1"] == 1.0 and data["chance"]["audio->image/R@1"] == pytest.approx(0.2)
    assert data["trained_pairs"] == [["audio", "text"]]
