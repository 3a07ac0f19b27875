"""`oneencoder compare` on planted pipeline outputs: the page shows each run's own figures side by
side, n/a where an older stage.json lacks a field, and names the command for results not yet made."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages.cli import main
from stages.compare import compare

ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data) if path.suffix == ".yaml" else json.dumps(data))
    return path


def _results(image_text: tuple[float, float], routing=None) -> dict:
    metrics = {"image->text/R@1": image_text[0], "image->text/R@10": image_text[1], "text->image/R@1": 0.3}
    chance = {"image->text/R@1": 0.01, "image->text/R@10": 0.1, "text->image/R@1": 0.02}
    data = {"manifest": "m.jsonl", "split": "test", "metrics": metrics, "chance": chance,
            "trained_pairs": [["image", "text"]],
            "zero_shot": {"metrics": {"image/zero-shot/acc@1": image_text[0] + 0.25},
                          "chance": {"image/zero-shot/acc@1": 0.125}}}
    return {**data, "routing": routing} if routing else data


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """Two finished pipelines, as the runner leaves them: a frozen progression (its second stage's
    stage.json written before stage costs were recorded), and an MoE one that starts from the first's
    `up`, forgets some image-text retrieval and reports router weights."""
    monkeypatch.chdir(tmp_path)  # the configs' output paths are relative, as in configs/pipeline/
    frozen = _write(tmp_path / "frozen.yaml", {
        "output": "out/frozen", "evaluate_each_stage": True,
        "stages": [{"name": "up", "config": "up.yaml"}, {"name": "align-audio", "config": "align.yaml"}],
        "evaluation": {"manifest": "m.jsonl"}})
    _write(tmp_path / "out/frozen/up/stage.json", {"name": "up", "status": "done", "seconds": 120.4,
                                                   "trainable_parameters": 1000000, "pairs": [["image", "text"]]})
    _write(tmp_path / "out/frozen/align-audio/stage.json", {"name": "align-audio", "status": "done"})
    _write(tmp_path / "out/frozen/results.json", _results((0.5, 0.9)))
    _write(tmp_path / "out/frozen/forgetting.json", {
        "stages": ["up", "align-audio"],
        "pairs": {"image->text": {"trained_at": "up", "R@1": {"up": 0.5, "align-audio": 0.5},
                                  "R@10": {"up": 0.9, "align-audio": 0.9}, "change": {"R@1": 0.0, "R@10": 0.0}},
                  "audio->text": {"trained_at": "align-audio", "R@1": {"align-audio": 0.2},
                                  "R@10": {"align-audio": 0.6}, "change": {"R@1": 0.0, "R@10": 0.0}}}})
    moe = _write(tmp_path / "moe.yaml", {
        "output": "out/moe", "start_from": "out/frozen/up", "evaluate_each_stage": True,
        "stages": [{"name": "moe", "config": "moe.yaml"}], "evaluation": {"manifest": "m.jsonl"}})
    _write(tmp_path / "out/moe/moe/stage.json", {"name": "moe", "seconds": 300.0, "trainable_parameters": 2500,
                                                 "pairs": [["audio", "text"], ["image", "text"]]})
    _write(tmp_path / "out/moe/results.json", _results((0.625, 0.875), routing={"image": [0.5, 0.25, 0.25]}))
    _write(tmp_path / "out/moe/forgetting.json", {
        "stages": ["start", "moe"],
        "pairs": {"image->text": {"trained_at": "start", "R@1": {"start": 0.5, "moe": 0.375},
                                  "R@10": {"start": 0.9, "moe": 0.875}, "change": {"R@1": -0.125, "R@10": -0.025}}}})
    return frozen, moe


def test_the_page_sets_each_pipeline_s_own_figures_side_by_side(planted):
    page = compare(planted)

    assert "All evaluated on `m.jsonl`, split `test`." in page
    assert "| query -> gallery | frozen R@1 | moe R@1 | chance R@1 | frozen R@10 | moe R@10 | chance R@10 |" in page
    assert "| image->text | 0.500 | 0.625 | 0.010 | 0.900 | 0.875 | 0.100 |" in page
    assert "| text->image | 0.300 | 0.300 | 0.020 | — | — | — |" in page  # R@10 not evaluated
    assert "| image | 0.750 | 0.875 | 0.125 |" in page  # zero-shot acc@1
    assert "| image->text | up | R@1 | 0.500 | 0.500 | 0 |" in page  # exactly unchanged
    assert "| audio->text | align-audio | R@10 |  | 0.600 | 0 |" in page
    assert "| image->text | start | R@1 | 0.500 | 0.375 | -0.125 |" in page.split("### moe")[1]  # the MoE forgot
    assert "| frozen | up | image-text | 1,000,000 | 120 s |" in page
    assert "| frozen | align-audio | n/a | n/a | n/a |" in page
    assert "| frozen | **total** |  |  | n/a |" in page  # a stage's time unknown: so is the sum
    assert "| moe | start_from (out/frozen/up) | image-text | 1,000,000 | 120 s |" in page
    assert "| moe | moe | audio-text, image-text | 2,500 | 300 s |" in page
    assert "| moe | **total** |  |  | 420 s |" in page
    routing = page.split("## Router weights")[1]
    assert "### moe" in routing and "### frozen" not in routing
    assert "| image | 0.500 | 0.250 | 0.250 |" in routing


def test_pipelines_evaluated_on_other_records_of_one_manifest_are_told_apart(planted, tmp_path):
    filtered = {**_results((0.5, 0.9)), "where": {"style": "openmoji"}}
    _write(tmp_path / "out/frozen/results.json", filtered)
    assert "**The pipelines were evaluated on different data** (frozen: `m.jsonl`, split `test`, records with" \
           " style=openmoji; moe: `m.jsonl`, split `test`)" in compare(planted)
    _write(tmp_path / "out/moe/results.json", filtered)
    assert "All evaluated on `m.jsonl`, split `test`, records with style=openmoji." in compare(planted)


def test_a_pair_never_trained_together_is_starred(planted, tmp_path):
    results = _results((0.5, 0.9))
    results["metrics"]["audio->image/R@1"] = 0.05
    _write(tmp_path / "out/frozen/results.json", results)
    assert "| audio->image | 0.050* | — | — |" in compare(planted)


def test_a_run_that_did_not_evaluate_every_stage_says_how_to_measure_forgetting(planted, tmp_path):
    (tmp_path / "out/moe/forgetting.json").unlink()
    assert f"Not measured: set `evaluate_each_stage: true` in {planted[1]}" in compare(planted)


def test_results_not_yet_made_name_their_file_and_command(planted, tmp_path):
    (tmp_path / "out/moe/results.json").unlink()
    with pytest.raises(ValueError, match=r"out/moe/results.json not found: .* run `oneencoder pipeline .*moe.yaml`"):
        compare(planted)
    with pytest.raises(ValueError, match="2 labels for 1 pipeline configs"):
        compare(planted[:1], labels=["a", "b"])
    with pytest.raises(ValueError, match="no evaluation named 'other'"):
        compare(planted[:1], evaluation="other")


def test_the_command_prints_the_page_and_writes_it(planted, tmp_path, capsys):
    main(["compare", *map(str, planted), "--labels", "OneEncoder", "OneLLM", "--output", str(tmp_path / "page.md")])
    printed = capsys.readouterr().out
    assert "| image->text | 0.500 | 0.625 | 0.010 |" in printed and "OneLLM R@1" in printed
    assert (tmp_path / "page.md").read_text() in printed
    (tmp_path / "out/frozen/results.json").unlink()
    with pytest.raises(SystemExit) as exited:
        main(["compare", str(planted[0])])
    assert str(exited.value.code).startswith("oneencoder compare: out/frozen/results.json not found")


def test_the_command_reads_json_without_importing_torch(planted, tmp_path):
    script = f"import sys, stages.cli; stages.cli.main(['compare', {str(planted[1])!r}]); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == "False"
