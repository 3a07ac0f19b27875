"""Cross-modal generalisation (stages/generalize.py): the classifier never sees the target modality or
test data, planted shared directions carry over, random features stay at chance, and the baselines,
usage figures and tables are what they claim."""

import json
import math
import sys
import types

import pytest
import torch

import stages.generalize as generalize
from stages.cli import generalize_parser, main, toc_parser
from stages.generalize import (
    SplitFeatures,
    code_usage,
    cross_modal_generalization,
    generalization_table,
    majority_accuracy,
    select_dimensions,
    toc_sweep,
    write_generalization,
)

CLASSES = ["bark", "bell", "drum", "horn"]
SIZES = {"train": 160, "val": 60, "test": 80}
FAST = generalize.TrainingConfig(max_epochs=30, patience=5)


def planted(shared: float = 3.0, dim: int = 16, codes: int = 8, seed: int = 0) -> dict:
    """Two modalities whose features hold a class direction common to both (scaled by `shared`; 0 gives
    features unrelated to the labels), plus noise of a scale each modality has its own."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(len(CLASSES), dim, generator=generator)
    features = {}
    for modality, noise in (("audio", 1.0), ("video", 1.5)):
        splits = {}
        for split, rows in SIZES.items():
            classes = torch.randint(len(CLASSES), (rows,), generator=generator)
            def draw():
                return shared * directions[classes] + noise * torch.randn(rows, dim, generator=generator)
            splits[split] = SplitFeatures(draw(), draw(), torch.randint(codes, (rows,), generator=generator),
                                          [CLASSES[c] for c in classes])
        features[modality] = splits
    return features


def test_the_classifier_sees_only_the_source_train_and_val_splits(monkeypatch):
    features = planted()
    calls = []
    fit = generalize.fit_classifier

    def spy(architecture, kind, train, val, config):
        calls.append((kind, train, val))
        return fit(architecture, kind, train, val, config)

    monkeypatch.setattr(generalize, "fit_classifier", spy)
    cross_modal_generalization(features, codes=8, config=FAST)
    assert len(calls) == 2 * 2 * 2  # sources x kinds x classifiers: one fit per source, every target tested
    tests = [splits["test"] for splits in features.values()]
    for source in features:
        mine = [(train, val) for _, train, val in calls if train is features[source]["train"]]
        assert len(mine) == 4 and all(val is features[source]["val"] for _, val in mine)
    for _, train, val in calls:
        assert not any(train is test or val is test for test in tests)


def test_a_shared_class_direction_carries_over_between_modalities():
    result = cross_modal_generalization(planted(), codes=8, config=FAST)
    for name in ("audio->video", "video->audio", "audio->audio"):
        pair = result.pairs[name]
        for kind in ("quantized", "continuous"):
            for classifier in ("linear", "mlp"):
                assert pair.accuracy[kind][classifier] > 0.9, (name, kind, classifier)
        assert pair.accuracy["quantized"]["linear"] > pair.majority + 0.4
        assert pair.chance == 1 / len(CLASSES) and pair.unseen == 0


def test_random_features_stay_near_chance():
    result = cross_modal_generalization(planted(shared=0.0), codes=8, config=FAST)
    for pair in result.pairs.values():
        for accuracies in pair.accuracy.values():
            assert all(accuracy < 0.45 for accuracy in accuracies.values()), pair


def test_the_same_seed_gives_the_same_figures_and_leaves_the_global_random_state_alone():
    state = torch.random.get_rng_state()
    first = cross_modal_generalization(planted(shared=0.5), codes=8, seed=3, config=FAST).to_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert cross_modal_generalization(planted(shared=0.5), codes=8, seed=3, config=FAST).to_dict() == first


def test_majority_is_the_source_train_class_scored_on_the_target_test_split():
    assert majority_accuracy(["a"] * 7 + ["b"] * 3, ["a", "b", "b", "b"]) == 0.25
    assert majority_accuracy(["b", "a"], ["a", "a", "b"]) == pytest.approx(2 / 3)  # a tie goes to the first name


def test_an_unbalanced_set_reports_its_majority_and_test_labels_unseen_in_train():
    features = planted()
    audio = features["audio"]
    labels = ["bark"] * 120 + ["bell"] * 40
    audio["train"] = SplitFeatures(audio["train"].quantized, audio["train"].continuous, audio["train"].indices, labels)
    video_test = features["video"]["test"].labels
    pair = cross_modal_generalization(features, codes=8, classifiers=["linear"], config=FAST).pairs["audio->video"]
    assert pair.majority == pytest.approx(video_test.count("bark") / len(video_test))
    assert pair.chance == 0.5
    assert pair.unseen == sum(label not in ("bark", "bell") for label in video_test)


def test_usage_on_hand_made_indices():
    usage = code_usage(torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), codes=6)
    assert usage.perplexity == pytest.approx(4.0) and usage.dead_codes == 2
    usage = code_usage(torch.tensor([[5, 5], [5, 5]]), codes=6)  # a fine level: several codes per record
    assert usage.perplexity == pytest.approx(1.0) and usage.dead_codes == 5
    skewed = code_usage(torch.tensor([0, 0, 0, 1]), codes=2)
    assert skewed.perplexity == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        code_usage(torch.tensor([6]), codes=6)


def test_the_table_puts_variants_side_by_side_with_chance_and_majority_once(tmp_path):
    features = planted()
    rows = {"shared VQ": cross_modal_generalization(planted(seed=1), codes=8, config=FAST),
            "+ FCID": cross_modal_generalization(features, codes=8, config=FAST)}
    with pytest.raises(ValueError, match="different"):  # other labels: the baselines differ
        generalization_table(rows)
    rows["shared VQ"] = cross_modal_generalization(features, codes=8, classifiers=["linear"], config=FAST)
    text = generalization_table(rows)
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| model"))
    assert "audio->video linear" in header and "video->audio MLP" in header
    assert "audio->audio control (linear / MLP)" in header and "audio->video continuous (linear / MLP)" in header
    body = [line for line in lines[lines.index(header) + 2:] if line.startswith("|")]
    assert [line.split("|")[1].strip() for line in body[:4]] == ["shared VQ", "+ FCID", "chance", "majority class"]
    assert body[2].count("0.250") == 8 and "–" in body[0]  # the linear-only variant has no MLP figures
    assert "perplexity" in text and "dead codes" in text
    json_path, markdown_path = write_generalization(rows, tmp_path / "out" / "generalization")
    assert markdown_path.read_text() == text
    assert set(json.loads(json_path.read_text())) == {"shared VQ", "+ FCID"}
    single = rows["+ FCID"].markdown()
    assert "audio->audio (same modality)" in single and "majority class" in single


def test_toc_sweep_slices_the_quantised_dimensions_only():
    features = planted(dim=8)
    sliced = select_dimensions(features, [1, 3])
    assert sliced["audio"]["test"].quantized.shape == (80, 2)
    assert torch.equal(sliced["video"]["val"].quantized, features["video"]["val"].quantized[:, [1, 3]])
    assert sliced["audio"]["train"].continuous is features["audio"]["train"].continuous
    rows = toc_sweep(features, 8, [2, 4], lambda k: list(range(k)), config=FAST)
    assert list(rows) == ["all 8 dimensions", "TOC k = 2", "TOC k = 4"]
    assert "continuous" not in rows["TOC k = 2"].pairs["audio->video"].accuracy
    assert "TOC k = 4" in generalization_table(rows)


def test_missing_splits_and_one_modality_are_refused():
    features = planted()
    with pytest.raises(ValueError, match="two or more modalities"):
        cross_modal_generalization({"audio": features["audio"]}, codes=8)
    del features["video"]["val"]
    with pytest.raises(ValueError, match="video has no labelled val"):
        cross_modal_generalization(features, codes=8)


class FakeCodebookModel:
    """What the commands use of oneencoder.codebook_model.CodebookModel."""

    saved: dict = {}

    def __init__(self, folder):
        self.folder = folder
        stored = [0, 1] if folder.endswith("toc") else None
        self.config = types.SimpleNamespace(codebook=types.SimpleNamespace(codes=8), toc=stored)

    @classmethod
    def from_pretrained(cls, folder):
        return cls(folder)

    def choose_toc(self, k):
        self.config.toc = list(range(k))
        return self.config.toc

    def save_toc(self, folder):
        FakeCodebookModel.saved[str(folder)] = self.config.toc


@pytest.fixture
def fake_lead_modules(monkeypatch):
    """The lead's feature extraction and model, replaced: the commands' own logic, without a model."""
    calls = []

    def extract_features(model, manifest, feature_cache, modalities, toc, cache_dtype, cache_precision):
        calls.append((model.folder, manifest, feature_cache, modalities, toc))
        return select_dimensions(planted(dim=8), model.config.toc) if toc and model.config.toc else planted(dim=8)

    monkeypatch.setitem(sys.modules, "stages.codebook_features", types.SimpleNamespace(extract_features=extract_features))
    monkeypatch.setitem(sys.modules, "oneencoder.codebook_model", types.SimpleNamespace(CodebookModel=FakeCodebookModel))
    return calls


def test_generalize_command_parses_and_writes_one_row_per_folder(fake_lead_modules, tmp_path, capsys):
    args = generalize_parser().parse_args(["a", "b", "--labels", "shared VQ", "+ TOC", "--toc", "off", "on",
                                           "--manifest", "m.jsonl", "--modalities", "audio", "video"])
    assert args.folders == ["a", "b"] and args.toc == ["off", "on"] and args.feature_cache is None
    with pytest.raises(SystemExit):
        generalize_parser().parse_args(["a", "--toc", "maybe", "--manifest", "m.jsonl"])
    main(["generalize", "runs/vq", "runs/toc", "--labels", "shared VQ", "+ TOC", "--toc", "off", "stored",
          "--manifest", "m.jsonl", "--feature_cache", "cache", "--output", str(tmp_path / "generalization")])
    assert [call[4] for call in fake_lead_modules] == [False, True]
    assert fake_lead_modules[0][:4] == ("runs/vq", ["m.jsonl"], "cache", ["audio", "video"])
    printed = capsys.readouterr().out
    assert "| shared VQ |" in printed and "| + TOC |" in printed
    assert (tmp_path / "generalization.md").exists() and (tmp_path / "generalization.json").exists()
    with pytest.raises(SystemExit, match="--labels has 1 values for 2 folders"):
        main(["generalize", "a", "b", "--labels", "one", "--manifest", "m.jsonl"])
    with pytest.raises(SystemExit, match="runs/vq, which stores no TOC choice"):
        main(["generalize", "runs/vq", "--toc", "on", "--manifest", "m.jsonl"])


def test_toc_command_reports_the_sweep_then_stores_the_choice(fake_lead_modules, capsys):
    main(["toc", "runs/fcid", "--k", "4", "--sweep", "2", "6", "--manifest", "m.jsonl"])
    printed = capsys.readouterr().out
    assert "| TOC k = 2 |" in printed and "| TOC k = 6 |" in printed and "| all 8 dimensions |" in printed
    assert [call[4] for call in fake_lead_modules] == [False]  # the sweep slices all dimensions itself
    assert FakeCodebookModel.saved["runs/fcid"] == [0, 1, 2, 3]
    assert toc_parser().parse_args(["f", "--k", "3", "--manifest", "m"]).sweep == []
