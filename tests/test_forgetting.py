"""The forgetting table from per-stage results: a planted progression where one stage retrains the
shared parts and the others leave them frozen."""

import json

import pytest

from stages.forgetting import first_trained, forgetting_markdown, forgetting_table, write_forgetting

STAGES = ["up", "align-audio", "moe"]
PAIRS = {"up": [("text", "image")], "align-audio": [("audio", "text")], "moe": [("image", "text"), ("audio", "text")]}


# image-text is frozen through align-audio (the same figures, bit for bit) and moved by the MoE stage,
# which retrains the projection; audio->text has no R@10 after the MoE stage (an evaluation without k=10).
RESULTS = {
    "up": {"metrics": {"image->text/R@1": 0.5, "image->text/R@10": 0.9, "text->image/R@1": 0.4,
                       "text->image/R@10": 0.8}},
    "align-audio": {"metrics": {"image->text/R@1": 0.5, "image->text/R@10": 0.9, "text->image/R@1": 0.4,
                                "text->image/R@10": 0.8, "audio->text/R@1": 0.3, "audio->text/R@10": 0.7,
                                "text->audio/R@1": 0.2, "text->audio/R@10": 0.6}},
    "moe": {"metrics": {"image->text/R@1": 0.375, "image->text/R@10": 0.9, "text->image/R@1": 0.5,
                        "text->image/R@10": 0.75, "audio->text/R@1": 0.3, "text->audio/R@1": 0.25,
                        "text->audio/R@10": 0.6}},
}


def test_each_pair_starts_at_the_first_stage_that_trained_it():
    assert first_trained(STAGES, PAIRS) == {frozenset(("image", "text")): "up", frozenset(("audio", "text")): "align-audio"}


def test_planted_progression_frozen_stages_show_exactly_zero_and_a_retraining_stage_its_change():
    table = forgetting_table(STAGES, PAIRS, RESULTS)
    assert table["stages"] == STAGES
    assert list(table["pairs"]) == ["image->text", "text->image", "audio->text", "text->audio"]
    image_text = table["pairs"]["image->text"]
    assert image_text["trained_at"] == "up"
    assert image_text["R@1"] == {"up": 0.5, "align-audio": 0.5, "moe": 0.375}
    assert image_text["change"] == {"R@1": -0.125, "R@10": 0.0}
    assert table["pairs"]["text->image"]["change"] == {"R@1": pytest.approx(0.1), "R@10": pytest.approx(-0.05)}
    audio_text = table["pairs"]["audio->text"]
    assert audio_text["trained_at"] == "align-audio"
    assert audio_text["R@1"] == {"align-audio": 0.3, "moe": 0.3}  # no column before it was trained
    assert audio_text["change"] == {"R@1": 0.0, "R@10": None}  # a figure missing: no change to state
    assert audio_text["R@10"] == {"align-audio": 0.7, "moe": None}
    # a frozen progression: every stage after the first leaves image-text exactly where it was
    frozen = forgetting_table(STAGES[:2], PAIRS, RESULTS)
    assert all(row["change"] == {"R@1": 0.0, "R@10": 0.0} for row in frozen["pairs"].values()
               if row["trained_at"] == "up")


def test_markdown_reads_at_a_glance(tmp_path):
    table = forgetting_table(STAGES, PAIRS, RESULTS)
    markdown = write_forgetting(tmp_path, table, "Forgetting on `m.jsonl`, split `test`")
    lines = markdown.splitlines()
    assert lines[0] == "Forgetting on `m.jsonl`, split `test`"
    assert lines[2] == "| pair | trained at | metric | up | align-audio | moe | change |"
    assert "| image->text | up | R@1 | 0.500 | 0.500 | 0.375 | -0.125 |" in lines
    assert "| image->text | up | R@10 | 0.900 | 0.900 | 0.900 | 0 |" in lines  # exactly equal
    assert "| audio->text | align-audio | R@10 |  | 0.700 | n/a | n/a |" in lines
    assert json.loads((tmp_path / "forgetting.json").read_text()) == table
    assert (tmp_path / "forgetting.md").read_text() == markdown
    assert "(no trained pairs)" in forgetting_markdown(forgetting_table(["up"], {}, {}))
