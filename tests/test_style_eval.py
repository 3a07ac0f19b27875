"""Evaluation of a manifest that draws the same concepts in several styles: the `where` filter, text<->image
per style with held-out styles marked, and image->image across styles by concept."""

import json
from pathlib import Path

import pytest
import torch
from torch.nn.functional import normalize

import stages.style_eval
from stages.evaluate import Embedded, evaluate, split_records
from stages.style_eval import evaluate_styles


def write_styled_manifest(shapes_manifest: Path, folder: Path, concepts: int = 6) -> Path:
    """`concepts` planted test shapes drawn in style `plain` and again, from the very same image files, in
    style `copy`; one `plain` record in split train, none of `copy` (held out)."""
    records = [json.loads(line) for line in shapes_manifest.read_text().splitlines()]
    tests = [r for r in records if r["split"] == "test" and r["id"].endswith("test0")][:concepts]
    train = next(r for r in records if r["split"] == "train")
    lines = [{"id": f"{style}/{r['id']}", "split": r["split"], "image": str(shapes_manifest.parent / r["image"]),
              "text": r["text"], "style": style, "concept": r["id"], "source": "shapes"}
             for style, chosen in (("plain", [train, *tests]), ("copy", tests)) for r in chosen]
    path = folder / "styled.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.fixture
def styled_manifest(shapes_manifest, tmp_path):
    return write_styled_manifest(shapes_manifest, tmp_path)


def test_where_keeps_exactly_the_records_whose_fields_match(styled_manifest, tiny_model):
    plain = split_records(str(styled_manifest), "test", {"style": "plain"})
    assert len(plain) == 6 and {r.fields["style"] for r in plain} == {"plain"}
    assert [r.id for r in split_records(str(styled_manifest), "test", {"style": "copy", "concept": plain[0].id[6:]})] \
        == [f"copy/{plain[0].id[6:]}"]
    evaluation = evaluate(tiny_model, str(styled_manifest), where={"style": "plain"})
    sizes = evaluation.to_dict()["sizes"]
    assert sizes["image->text"] == {"queries": 6, "gallery": 18}  # not the 12 images of both styles
    assert evaluation.to_dict()["where"] == {"style": "plain"}
    assert "split `test`, records with style=plain" in evaluation.markdown()
    with pytest.raises(ValueError, match=r"styled.jsonl: none of its 12 'test' records has style=nope, source=shapes"):
        split_records(str(styled_manifest), "test", {"style": "nope", "source": "shapes"})


def test_identical_drawings_in_two_styles_find_each_other_and_the_untrained_style_is_held_out(styled_manifest, tiny_model,
                                                                                            tmp_path):
    evaluation = evaluate_styles(tiny_model, str(styled_manifest))
    assert evaluation.styles == ["plain", "copy"] and evaluation.held_out == ["copy"]
    assert [(r.query, r.gallery, r.metrics["R@1"], r.queries, r.gallery_size) for r in evaluation.across] == [
        ("plain", "copy", 1.0, 6, 6), ("copy", "plain", 1.0, 6, 6)]  # plain's train record is not in the test split
    assert [(style, r.name, r.queries, r.gallery_size) for style, r in evaluation.within] == [
        ("plain", "text->image", 18, 6), ("plain", "image->text", 6, 18),
        ("copy", "text->image", 18, 6), ("copy", "image->text", 6, 18)]
    evaluation.write(tmp_path / "out", extra={"hash": "h"}, stem="results-styles")
    data = json.loads((tmp_path / "out/results-styles.json").read_text())
    assert data["metrics"]["plain->copy/image->image/R@1"] == 1.0
    assert data["chance"]["plain->copy/image->image/R@1"] == pytest.approx(1 / 6)
    assert data["sizes"]["copy/text->image"] == {"queries": 18, "gallery": 6}
    assert (data["held_out"], data["by"], data["hash"]) == (["copy"], "style", "h")
    page = (tmp_path / "out/results-styles.md").read_text()
    assert "| copy | text->image | " in page and page.count("| held out |") == 2
    assert "| plain | - | 1.000 (0.167) |" in page and "| copy | 1.000 (0.167) | - |" in page


def planted(model, records, modality, *args, **kwargs):
    """Embeddings by concept: every caption of a record and its image are its concept's vector."""
    vectors = normalize(torch.randn(len(records), 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    concept = {c: i for i, c in enumerate(dict.fromkeys(r.fields["concept"] for r in records))}
    rows = [i for i, r in enumerate(records) if modality in r.fields
            for _ in (r.captions() if modality == "text" else [None])]
    return Embedded(vectors[[concept[records[i].fields["concept"]] for i in rows]], torch.tensor(rows))


def test_per_style_ranks_within_the_style_and_across_styles_by_concept(tmp_path, monkeypatch):
    """Each caption equals its image, and a concept's images are equal in every style: within a style
    every query ranks its own item first (another style's equal item would tie, and ties count against
    it); across styles every image finds its concept's, among the concepts both styles draw."""
    lines = [{"id": f"{style}/{c}", "split": split, "image": f"{style}/{c}.png", "text": [f"{c} one", f"{c} two"],
              "style": style, "concept": c}
             for style, concepts, split in (("a", "pqrst", "test"), ("b", "pqrst", "test"), ("c", "pqr", "test"),
                                            ("a", "xy", "train"), ("c", "xy", "train"))
             for c in concepts]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    monkeypatch.setattr(stages.style_eval, "embed_split", planted)
    evaluation = evaluate_styles(None, str(manifest), ks=(1, 10))
    assert evaluation.held_out == ["b"]
    assert {(style, r.name): (r.metrics["R@1"], r.queries, r.gallery_size) for style, r in evaluation.within} == {
        ("a", "text->image"): (1.0, 10, 5), ("a", "image->text"): (1.0, 5, 10), ("b", "text->image"): (1.0, 10, 5),
        ("b", "image->text"): (1.0, 5, 10), ("c", "text->image"): (1.0, 6, 3), ("c", "image->text"): (1.0, 3, 6)}
    across = {r.name: (r.metrics["R@1"], r.queries, r.gallery_size) for r in evaluation.across}
    assert across == {"a->b": (1.0, 5, 5), "b->a": (1.0, 5, 5), "a->c": (1.0, 3, 3), "c->a": (1.0, 3, 3),
                      "b->c": (1.0, 3, 3), "c->b": (1.0, 3, 3)}
    assert evaluation.to_dict()["chance"]["a->c/image->image/R@10"] == 1.0  # 10 beyond a gallery of 3
    with pytest.raises(ValueError, match=r"m.jsonl:1 \(id 'a/p'\): no `medium` field \(13 such 'test' records"):
        evaluate_styles(None, str(manifest), by="medium")
