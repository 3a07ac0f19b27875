"""The report: every figure's plotted values are the saved results' (checked through figures.json, not
pixels), a report renders for one modality pair and without labels, it is the same for a seed, and
`oneencoder report` redraws it from the folder alone."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file
from torch.utils.tensorboard import SummaryWriter

from stages import figures
from stages.cli import main
from stages.evaluate import evaluate
from stages.forgetting import forgetting_table, write_forgetting
from stages.markdown import FIGURES_MARK
from stages.report import HTML, write_report
from stages.report_data import ReportData, embeddings_path


@pytest.fixture
def evaluated(tiny_model, labelled_manifest, tmp_path):
    """A folder with a labelled evaluation's results, written as the pipeline and the CLI write them."""
    evaluation = evaluate(tiny_model, str(labelled_manifest), templates=["{}", "a {} shape"])
    evaluation.trained = {frozenset(("image", "text"))}
    folder = tmp_path / "run"
    evaluation.write(folder)
    return folder


def figures_json(folder):
    return json.loads((folder / "figures" / "figures.json").read_text())


def test_plotted_values_are_the_results_json_figures(evaluated):
    write_report(evaluated)
    results, plotted = json.loads((evaluated / "results.json").read_text()), figures_json(evaluated)
    pairs = plotted["recall"]["data"]["pairs"]
    assert set(pairs) == {"image->text", "text->image"}
    for pair, row in pairs.items():
        for k in ("R@1", "R@5", "R@10"):
            assert row[k] == results["metrics"][f"{pair}/{k}"]
            assert row["chance"][k] == results["chance"][f"{pair}/{k}"]
        assert row["transitive"] is False
    zero_shot = plotted["zero-shot"]["data"]["modalities"]["image"]
    counts = torch.tensor(zero_shot["counts"])
    assert int(counts.sum()) == results["zero_shot"]["sizes"]["image"]["records"]
    assert zero_shot["accuracy"] == pytest.approx(results["zero_shot"]["metrics"]["image/zero-shot/acc@1"])
    similarity = plotted["similarity"]["data"]
    data = ReportData.load(embeddings_path(evaluated, "results"))
    first, second = similarity["records"][:2]
    image_row = data.owners["image"].tolist().index(first)
    text_row = data.owners["text"].tolist().index(second)
    n = len(similarity["records"])
    assert similarity["similarity"][0][n + 1] == pytest.approx(
        float(data.embeddings["image"][image_row] @ data.embeddings["text"][text_row]), abs=1e-4)
    space = plotted["joint-space"]["data"]
    assert len(space["points"]) == sum(len(o) for o in data.owners.values())
    assert sorted(space["modalities"]) == sorted(["image"] * len(data.owners["image"]) + ["text"] * len(data.owners["text"]))


def test_transitive_pairs_are_marked_and_forgetting_follows_its_table(evaluated):
    results = json.loads((evaluated / "results.json").read_text())
    results["trained_pairs"] = []  # as if image and text only met through a third modality
    (evaluated / "results.json").write_text(json.dumps(results))
    stage_results = {"a": {"metrics": {"image->text/R@10": 0.5, "text->image/R@10": 0.25}},
                     "b": {"metrics": {"image->text/R@10": 0.5, "text->image/R@10": 0.125}}}
    table = forgetting_table(["a", "b"], {"a": [("image", "text")]}, stage_results, metrics=("R@10",))
    write_forgetting(evaluated, table, "Forgetting")
    write_report(evaluated)
    plotted = figures_json(evaluated)
    assert all(row["transitive"] for row in plotted["recall"]["data"]["pairs"].values())
    assert plotted["forgetting"]["data"]["pairs"] == {"image->text": {"a": 0.5, "b": 0.5},
                                                      "text->image": {"a": 0.25, "b": 0.125}}
    assert plotted["forgetting"]["data"]["chance"] == {p: results["chance"][f"{p}/R@10"] for p in ("image->text", "text->image")}


def test_a_report_without_labels_renders_without_the_confusion_figure(tiny_model, shapes_manifest, tmp_path):
    records = [json.loads(line) for line in shapes_manifest.read_text().splitlines()]
    unlabelled = shapes_manifest.parent / "unlabelled.jsonl"
    unlabelled.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "label"}) + "\n" for r in records))
    evaluate(tiny_model, str(unlabelled)).write(tmp_path / "run")
    report = write_report(tmp_path / "run")
    plotted = figures_json(tmp_path / "run")
    assert set(plotted) == {"recall", "joint-space", "similarity"}
    assert plotted["joint-space"]["data"]["labels"] == []
    assert report.read_text().count("data:image/png;base64,") == 3


def test_the_report_is_the_same_for_a_seed_and_moves_with_it(evaluated):
    write_report(evaluated, seed=3)
    first = {p.name: p.read_bytes() for p in (evaluated / "figures").iterdir()}
    write_report(evaluated, seed=3)
    assert {p.name: p.read_bytes() for p in (evaluated / "figures").iterdir()} == first
    data = ReportData.load(embeddings_path(evaluated, "results"))
    chosen = json.loads(first["figures.json"])["similarity"]["data"]["records"]
    assert figures.similarity_matrix(data, seed=4).data["records"] != chosen  # the records drawn follow the seed


def test_results_md_gets_one_figures_section_however_often_the_report_is_drawn(evaluated):
    tables = (evaluated / "results.md").read_text()
    write_report(evaluated)
    write_report(evaluated)
    text = (evaluated / "results.md").read_text()
    assert text.startswith(tables.rstrip("\n")) and text.count(FIGURES_MARK) == 1
    assert "![" in text and "(figures/recall.png)" in text and f"({HTML})" in text


def test_training_curves_merge_a_resumed_run_and_a_codebook_shows_its_usage(tmp_path):
    stage = tmp_path / "codebook"
    for version, losses in ((0, {0: 4.0, 1: 3.0}), (1, {1: 2.5, 2: 2.0})):  # version_1 resumed at step 1
        writer = SummaryWriter(stage / "lightning_logs" / f"version_{version}")
        for step, loss in losses.items():
            writer.add_scalar("train/loss", loss, step)
        writer.add_scalar("train/perplexity", 10.0 + version, 2)
        writer.close()
    (stage / "config.json").write_text(json.dumps({"format": "oneencoder-codebook", "format_version": 1}))
    save_file({"codebook.ema_count": torch.tensor([6.0, 2.0, 0.0, 2.0])}, stage / "model.safetensors")
    write_report(tmp_path)
    plotted = figures_json(tmp_path)
    assert plotted["training-codebook"]["data"]["loss"]["train/loss"] == [[0, 4.0], [1, 2.5], [2, 2.0]]
    assert plotted["training-codebook"]["data"]["codebook perplexity"]["train/perplexity"] == [[2, 11.0]]
    usage = plotted["codebook-codebook"]["data"]
    assert usage["share"] == pytest.approx([0.6, 0.2, 0.2, 0.0])
    assert usage["codes_for_90_percent"] == 3
    assert usage["perplexity"] == pytest.approx(torch.tensor([0.6, 0.2, 0.2]).log().mul(torch.tensor([0.6, 0.2, 0.2])).sum().neg().exp().item())


def test_a_mixture_s_router_weights_are_drawn_as_evaluated(evaluated):
    results = json.loads((evaluated / "results.json").read_text())
    results["routing"] = {"image": [0.5, 0.25, 0.25], "text": [0.125, 0.125, 0.75]}
    (evaluated / "results.json").write_text(json.dumps(results))
    write_report(evaluated)
    assert figures_json(evaluated)["router"]["data"]["routing"] == results["routing"]


def test_oneencoder_report_redraws_from_the_folder_alone_and_names_an_empty_one(evaluated, tmp_path, capsys):
    copy = tmp_path / "copied"
    shutil.copytree(evaluated, copy)  # no model anywhere near it
    main(["report", str(copy), "--seed", "1"])
    assert (copy / HTML).exists() and (copy / "figures" / "joint-space.png").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="oneencoder report: .*empty: no results.json"):
        main(["report", str(tmp_path / "empty")])
