"""Retrieval between all modality pairs, the chance levels printed beside it, and zero-shot
classification of labelled records."""

import itertools
import json
from collections import Counter

import pytest
import torch
from conftest import tiny_model_config
from torch.nn.functional import normalize

import oneencoder.retrieval
from oneencoder import OneEncoder
from oneencoder.config import ProjectionConfig
from oneencoder.retrieval import NonFiniteEmbeddingError, chance_levels, recall_at_k
from oneencoder.zero_shot import accuracy_at_k
from datamodules.feature_cache import build_cache
from datamodules.manifest import read_manifest
from stages.evaluate import (
    Embedded,
    Evaluation,
    class_embeddings,
    embed_records,
    evaluate,
    pair_result,
    serving_caches,
    split_records,
    zero_shot_result,
)


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


def reference_pair(a: Embedded, b: Embedded, ks):
    """Retrieval metrics and chance as computed before chunking: the whole similarity matrix and mask."""
    shared = torch.tensor(sorted(set(a.owners.tolist()) & set(b.owners.tolist())))
    keep_a, keep_b = torch.isin(a.owners, shared), torch.isin(b.owners, shared)
    similarity = a.embeddings[keep_a] @ b.embeddings[keep_b].T
    relevant = a.owners[keep_a][:, None] == b.owners[keep_b][None, :]
    best_relevant = similarity.masked_fill(~relevant, float("-inf")).max(dim=1, keepdim=True).values
    ranks = ((similarity >= best_relevant) & ~relevant).sum(dim=1)
    return recall_at_k(ranks, ks), chance_levels(relevant.sum(1).tolist(), int(keep_b.sum()), ks)


def reference_zero_shot(embeddings, targets, prototypes, ks):
    """Accuracy@k and majority share as computed before: one argsort of every item's class scores."""
    ranking = (embeddings @ prototypes.T).argsort(dim=1, descending=True)
    metrics = {f"acc@{k}": (ranking[:, :k] == targets[:, None]).any(1).float().mean().item() for k in ks}
    return metrics, Counter(targets.tolist()).most_common(1)[0][1] / len(targets)


@pytest.mark.parametrize("chunk", [None, 3])  # as the default budget has it (all at once), or 3 queries at a time
def test_evaluation_equals_the_full_matrix_computation(tiny_model, labelled_manifest, monkeypatch, chunk):
    if chunk:  # a budget for 3 image queries at a time against the 288 captions of the shared records
        monkeypatch.setattr(oneencoder.retrieval, "MEMORY_BUDGET", oneencoder.retrieval.BYTES_PER_CELL * chunk * 288)
    ks = (1, 5, 10)
    evaluation = evaluate(tiny_model, str(labelled_manifest), ks=ks, templates=["{}", "a {} shape"])
    records = split_records(str(labelled_manifest), "test")
    embedded = {}
    for m in ("image", "text"):
        positions = torch.tensor([i for i, r in enumerate(records) if m in r.fields])
        rows = embed_records(tiny_model, [records[i] for i in positions], m)
        embedded[m] = Embedded(rows.embeddings, positions[rows.owners])
    assert len(evaluation.results) == 2
    for result, (a, b) in zip(evaluation.results, itertools.permutations(("image", "text"))):
        assert (result.query, result.gallery) == (a, b)
        assert (result.metrics, result.chance) == reference_pair(embedded[a], embedded[b], ks)  # exact floats
    (zero_shot,) = evaluation.zero_shot
    classes = sorted({r.fields["label"] for r in records if "label" in r.fields})
    prototypes = class_embeddings(tiny_model, classes, ["{}", "a {} shape"])
    labelled = [i for i, owner in enumerate(embedded["image"].owners.tolist()) if "label" in records[owner].fields]
    owners = embedded["image"].owners[labelled].tolist()
    targets = torch.tensor([classes.index(records[owner].fields["label"]) for owner in owners])
    ks = [k for k in (1, 5) if k < len(classes)] or [1]
    metrics, majority = reference_zero_shot(embedded["image"].embeddings[labelled], targets, prototypes, ks)
    assert (zero_shot.metrics, zero_shot.majority) == (metrics, majority)


def _refuse_to_encode(model, modality, monkeypatch):
    def refuse(inputs):
        raise AssertionError(f"the {modality} encoder ran although its cache serves")

    monkeypatch.setattr(model.encoders[modality], "encode", refuse)


def test_evaluation_reads_frozen_features_from_a_stage_cache(tiny_model, labelled_manifest, tmp_path, monkeypatch, capsys):
    records = read_manifest(labelled_manifest)  # every split: a stage caches them all
    images = [r for r in records if "image" in r.fields]
    captioned = [r for r in records if "text" in r.fields]
    build_cache(tmp_path / "up", "image", images, tiny_model.encoders["image"], items_per_shard=16)
    # Two stages' caption caches, each of its own records': together they hold every caption.
    build_cache(tmp_path / "up", "text", captioned[::2], tiny_model.encoders["text"], items_per_shard=16)
    build_cache(tmp_path / "align", "text", captioned[1::2], tiny_model.encoders["text"], items_per_shard=16)
    encoded = evaluate(tiny_model, str(labelled_manifest), templates=["{}"])
    _refuse_to_encode(tiny_model, "image", monkeypatch)  # the captions' encoder still makes the class prompts
    cached = evaluate(tiny_model, str(labelled_manifest), templates=["{}"],
                      feature_caches=[tmp_path / "elsewhere", tmp_path / "up", tmp_path / "align"])
    out = capsys.readouterr().out
    assert f"image features of {sum(r.split == 'test' for r in images)} items read from {tmp_path / 'up' / 'image'}\n" in out
    assert f"read from {tmp_path / 'up' / 'text'}, {tmp_path / 'align' / 'text'}\n" in out
    for modality in ("image", "text"):
        torch.testing.assert_close(cached.report_data.embeddings[modality], encoded.report_data.embeddings[modality])
    assert [r.metrics for r in cached.results] == [r.metrics for r in encoded.results]


def test_a_cache_that_cannot_serve_is_named_and_its_modality_encoded(tiny_model, labelled_manifest, tmp_path, capsys):
    records = [r for r in read_manifest(labelled_manifest) if "image" in r.fields]
    build_cache(tmp_path / "cache", "image", records[:-3], tiny_model.encoders["image"])  # lacks 3 test images
    test = split_records(str(labelled_manifest), "test")
    images = sum("image" in r.fields for r in test)
    assert serving_caches(tiny_model, test, ["image"], [tmp_path / "cache"], "32-true") == {}
    folder = tmp_path / "cache" / "image"
    assert f"image encoded: the caches in {folder} hold {images - 3} of its {images} items as they are now\n" in capsys.readouterr().out
    build_cache(tmp_path / "bf16", "image", records, tiny_model.encoders["image"], precision="bf16-mixed")
    assert serving_caches(tiny_model, test, ["image"], [tmp_path / "bf16"], "32-true") == {}
    assert "was encoded in bf16-mixed, the config asks for 32-true\n" in capsys.readouterr().out  # no advice to rebuild
    assert list(serving_caches(tiny_model, test, ["image"], [tmp_path / "bf16"], "bf16-mixed")) == ["image"]


@pytest.mark.parametrize("chunk", [1, 7, 1000, None])
def test_zero_shot_accuracy_in_chunks_equals_one_argsort(chunk):
    generator = torch.Generator().manual_seed(0)
    prototypes = normalize(torch.randn(12, 8, generator=generator), dim=-1)
    targets = torch.randint(0, 12, (100,), generator=generator)
    items = normalize(prototypes[targets] + torch.randn(100, 8, generator=generator), dim=-1)
    expected, _ = reference_zero_shot(items, targets, prototypes, (1, 5))
    assert 0 < expected["acc@1"] < expected["acc@5"] < 1
    assert accuracy_at_k(items, targets, prototypes, (1, 5), chunk) == expected


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


class PromptTable(torch.nn.Module):
    """A stand-in model whose text embeddings are looked up by prompt."""

    def __init__(self, vectors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.vectors = vectors
        self.where = torch.nn.Parameter(torch.zeros(1))  # the device embedding runs on

    def embed(self, modality, items, batch_size=64):
        assert modality == "text"
        return torch.stack([self.vectors[item] for item in items])


def test_class_embedding_is_the_normalised_mean_over_templates():
    vectors = {p: torch.randn(6) for p in ("cat", "a photo of cat", "dog", "a photo of dog")}
    prototypes = class_embeddings(PromptTable(vectors), ["cat", "dog"], ["{}", "a photo of {}"])
    expected = normalize(torch.stack([vectors["cat"] + vectors["a photo of cat"],
                                      vectors["dog"] + vectors["a photo of dog"]]), dim=-1)
    torch.testing.assert_close(prototypes, expected)
    with pytest.raises(ValueError, match="where the class name goes"):
        class_embeddings(PromptTable(vectors), ["cat"], ["a photo"])


def test_every_brace_of_a_template_takes_the_class_name():
    vectors = {"a cat, this is a photo of a cat": torch.ones(4)}
    prototypes = class_embeddings(PromptTable(vectors), ["cat"], ["a {}, this is a photo of a {}"])
    torch.testing.assert_close(prototypes, torch.full((1, 4), 0.5))


def test_zero_shot_accuracy_chance_and_majority_on_planted_items():
    classes = ["a", "b", "c", "d", "e", "f"]
    prototypes = normalize(torch.randn(6, 16), dim=-1)
    labels = ["a", "a", "a", "b", None]  # the unlabelled record is left out
    items = Embedded(prototypes[[0, 0, 0, 1, 2]] + 0.01 * torch.randn(5, 16), torch.arange(5))
    result = zero_shot_result("image", items, labels, classes, prototypes, templates=1)
    assert result.metrics == {"acc@1": 1.0, "acc@5": 1.0} and result.records == 4
    assert result.chance == {"acc@1": pytest.approx(1 / 6), "acc@5": pytest.approx(5 / 6)}
    assert result.majority == 0.75
    wrong = Embedded(prototypes[[1, 1, 1, 0, 0]], torch.arange(5))  # every item looks like another class
    assert zero_shot_result("image", wrong, labels, classes, prototypes, 1).metrics["acc@1"] == 0.0


def test_evaluation_classifies_labelled_records_zero_shot(tiny_model, labelled_manifest):
    evaluation = evaluate(tiny_model, str(labelled_manifest), templates=["{}", "a {} shape"])
    (result,) = evaluation.zero_shot
    colours = {json.loads(line).get("label") for line in labelled_manifest.read_text().splitlines()} - {None}
    assert (result.modality, result.records, result.classes, result.templates) == ("image", 96, len(colours), 2)
    assert "Zero-shot classification by `label`" in evaluation.markdown()
    assert set(evaluation.to_dict()["zero_shot"]["metrics"]) == {"image/zero-shot/acc@1"} | (
        {"image/zero-shot/acc@5"} if len(colours) > 5 else set()
    )
    with pytest.raises(ValueError, match="label 'blue' is not among the classes"):
        evaluate(tiny_model, str(labelled_manifest), classes=["red", "green"])


def test_pairs_no_record_has_are_named_not_evaluated(tiny_model, shapes_manifest, tmp_path):
    records = [r for r in map(json.loads, shapes_manifest.read_text().splitlines()) if r["split"] == "test"][:4]
    lines = [{"id": "i", "split": "test", "image": str(shapes_manifest.parent / records[0]["image"])},
             {"id": "t", "split": "test", "text": "a red circle"}]
    manifest = tmp_path / "apart.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    evaluation = evaluate(tiny_model, str(manifest))
    assert evaluation.results == [] and evaluation.unpaired == ["image-text"]
    assert "No record has both of: image-text" in evaluation.markdown()


def test_a_model_with_a_nan_weight_is_refused_not_scored(tiny_model, shapes_manifest):
    with torch.no_grad():
        next(tiny_model.heads["text"].parameters())[0].fill_(float("nan"))  # only text embeddings break
    with pytest.raises(NonFiniteEmbeddingError, match=r"(\d+) of \1 text embeddings on .*'test' split"):
        evaluate(tiny_model, str(shapes_manifest))


def _mixture(router: str) -> OneEncoder:
    torch.manual_seed(0)
    return OneEncoder(tiny_model_config(projection=ProjectionConfig(kind="moe", experts=3, router=router))).eval()


def test_a_mixture_reports_each_modality_s_mean_router_weight_per_expert(shapes_manifest):
    evaluation = evaluate(_mixture("soft"), str(shapes_manifest))
    assert set(evaluation.routing) == {"image", "text"}
    for weights in evaluation.routing.values():
        assert len(weights) == 3 and all(w > 0 for w in weights) and sum(weights) == pytest.approx(1.0)
    assert evaluation.to_dict()["routing"] == evaluation.routing
    table = evaluation.markdown()
    assert "| modality | expert 1 | expert 2 | expert 3 |" in table
    assert "| image | " + " | ".join(f"{w:.3f}" for w in evaluation.routing["image"]) + " |" in table
    constant = evaluate(_mixture("constant"), str(shapes_manifest), modalities=["image", "text"])
    assert constant.routing == {m: pytest.approx([1 / 3] * 3) for m in ("image", "text")}


def test_a_universal_projection_has_no_router_to_report(tiny_model, shapes_manifest):
    evaluation = evaluate(tiny_model, str(shapes_manifest))
    assert evaluation.routing == {} and "routing" not in evaluation.to_dict()
    assert "Router weights" not in evaluation.markdown()


def test_bf16_evaluation_encodes_under_autocast_reads_outside_it_and_records_it(tiny_model, labelled_manifest,
                                                                               monkeypatch):
    seen = {"preprocessing": set(), "encoding": set()}
    encoder = tiny_model.encoders["image"]
    preprocess, encode = type(encoder.preprocessor).__call__, type(encoder).encode

    def watched_preprocess(self, items):  # where a mel spectrogram would come out in bf16 and break numpy
        seen["preprocessing"].add(torch.is_autocast_enabled("cpu"))
        return preprocess(self, items)

    def watched_encode(self, inputs):
        seen["encoding"].add(torch.is_autocast_enabled("cpu"))
        return encode(self, inputs)

    monkeypatch.setattr(type(encoder.preprocessor), "__call__", watched_preprocess)
    monkeypatch.setattr(type(encoder), "encode", watched_encode)
    exact = evaluate(tiny_model, str(labelled_manifest), templates=["{}", "a {} shape"])
    assert seen == {"preprocessing": {False}, "encoding": {False}} and exact.to_dict()["precision"] == "32-true"
    half = evaluate(tiny_model, str(labelled_manifest), templates=["{}", "a {} shape"], precision="bf16-mixed")
    assert seen == {"preprocessing": {False}, "encoding": {False, True}} and half.to_dict()["precision"] == "bf16-mixed"
    embeddings = half.report_data.embeddings["image"]
    assert embeddings.dtype == torch.float32 and not torch.equal(embeddings, exact.report_data.embeddings["image"])
    torch.testing.assert_close(embeddings, exact.report_data.embeddings["image"], atol=0.05, rtol=0.05)
