"""The stage runner: resolved stage configs, hashes, and the whole chain on the planted set."""

import dataclasses
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_encoder, tiny_model_config
from safetensors.torch import load_file

from oneencoder import OneEncoder
from stages import pipeline
from stages.config_merge import merge_stage_configs
from stages.markdown import without_figures
from stages.pipeline import (PipelineError, PipelineSpec, StageSpec, data_sources, feature_cache_roots, model_trained_pairs, plan, resolve_stage_config, run_pipeline, stage_lock, start_model,
                             trained_pairs, weights_digest)

ROOT = Path(__file__).resolve().parents[1]


def _pipeline(tmp_path, stages, **extra):
    path = tmp_path / "pipeline.yaml"
    # The report has tests of its own, and one here (the forgetting table's); drawing it in every test costs a minute.
    path.write_text(yaml.safe_dump({"output": str(tmp_path / "out"), "stages": stages, "report": False, **extra}))
    return path


def test_stage_outputs_point_into_its_folder_and_align_gets_the_previous_one(tmp_path):
    spec = PipelineSpec.load(_pipeline(tmp_path, [
        {"name": "up", "config": str(ROOT / "configs/up.yaml")},
        {"name": "audio", "config": str(ROOT / "configs/align_audio.yaml")},
    ]))
    up, audio = plan(spec)
    config = audio.config
    assert config["trainer"]["default_root_dir"] == str(tmp_path / "out/audio")
    assert config["trainer"]["logger"]["init_args"]["save_dir"] == str(tmp_path / "out/audio")
    dirpaths = {c["class_path"].rsplit(".", 1)[-1]: c["init_args"].get("dirpath") for c in config["trainer"]["callbacks"]}
    assert dirpaths["StageCheckpoint"] == str(tmp_path / "out/audio/checkpoints")
    assert dirpaths["ExportPretrained"] == str(tmp_path / "out/audio")
    assert config["model"]["init_args"]["previous"] == str(tmp_path / "out/up")
    assert "previous" not in up.config["model"]["init_args"]


def test_hash_follows_config_manifest_and_previous_stage(tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text('{"id": "a", "split": "train"}\n')
    up = yaml.safe_load((ROOT / "configs/up.yaml").read_text())
    up["data"]["init_args"]["manifest"] = str(manifest)
    (tmp_path / "up.yaml").write_text(yaml.safe_dump(up))
    stages = [{"name": "up", "config": str(tmp_path / "up.yaml")},
              {"name": "audio", "config": str(ROOT / "configs/align_audio.yaml")}]
    first = [r.hash for r in plan(PipelineSpec.load(_pipeline(tmp_path, stages)))]
    assert first == [r.hash for r in plan(PipelineSpec.load(_pipeline(tmp_path, stages)))]
    manifest.write_text('{"id": "b", "split": "train"}\n')
    changed = [r.hash for r in plan(PipelineSpec.load(_pipeline(tmp_path, stages)))]
    assert changed[0] != first[0] and changed[1] != first[1]  # a changed stage reruns the ones after it
    up["data"]["init_args"]["manifest"] = [str(manifest), str(manifest)]  # several manifests: each one counts
    (tmp_path / "up.yaml").write_text(yaml.safe_dump(up))
    listed = plan(PipelineSpec.load(_pipeline(tmp_path, stages)))[0].hash
    manifest.write_text('{"id": "c", "split": "train"}\n')
    assert plan(PipelineSpec.load(_pipeline(tmp_path, stages)))[0].hash != listed


def test_hash_follows_the_stages_own_media_files_even_with_size_and_time_kept(tmp_path):
    from datamodules.shapes import write_shapes_dataset

    manifest = write_shapes_dataset(tmp_path / "data", train_per_combo=1)
    stages = []
    for name in ("up", "align_audio"):
        config = yaml.safe_load((ROOT / f"configs/{name}.yaml").read_text())
        config["data"]["init_args"]["manifest"] = str(manifest)
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
        stages.append({"name": name, "config": str(tmp_path / f"{name}.yaml")})

    def hashes():
        return [r.hash for r in plan(PipelineSpec.load(_pipeline(tmp_path, stages)))]

    def edit_in_place(path):
        stat, data = path.stat(), bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    first = json.loads(manifest.read_text().splitlines()[0])
    (tmp_path / "out").mkdir()  # where the runner keeps the signatures it computed: a rerun hashes only changed files
    before = hashes()
    assert (tmp_path / "out/.media-signatures.json").is_file() and hashes() == before
    edit_in_place(manifest.parent / first["audio"])  # only the audio stage reads sounds
    after_audio = hashes()
    assert after_audio[0] == before[0] and after_audio[1] != before[1]
    edit_in_place(manifest.parent / first["image"])
    after_image = hashes()
    assert after_image[0] != after_audio[0] and after_image[1] != after_audio[1]
    (manifest.parent / first["image"]).unlink()  # a file gone is a change too
    gone = hashes()
    assert gone[0] != after_image[0]
    lines = manifest.read_text().splitlines()
    lines[0] = json.dumps({**first, "image": None})  # a record the stage will skip or name
    manifest.write_text("\n".join(lines) + "\n")
    with_bad_record = hashes()
    edit_in_place(manifest.parent / json.loads(lines[1])["image"])  # the other records still count
    assert hashes()[0] != with_bad_record[0]


def test_trained_pairs_of_each_stage_kind():
    def pairs(**init_args):
        return trained_pairs({"model": {"class_path": "stages.Some", "init_args": init_args}})

    assert pairs() == pairs(pair=["text", "image"]) == {frozenset(("image", "text"))}  # UPStage's default
    assert pairs(pair=["audio", "text"]) == {frozenset(("audio", "text"))}
    assert pairs(modality="audio") == {frozenset(("audio", "text"))}  # AlignStage, anchor text by default
    assert pairs(modality="video", anchor="image") == {frozenset(("video", "image"))}
    assert pairs(pairs=[["image", "text"], ["audio", "text"]], modality="ignored") == {
        frozenset(("image", "text")), frozenset(("audio", "text"))}


def test_hash_follows_every_source_of_a_balanced_data_module(tmp_path):
    manifests = [tmp_path / "first.jsonl", tmp_path / "second.jsonl"]
    for manifest in manifests:
        manifest.write_text('{"id": "a", "split": "train"}\n')
    config = yaml.safe_load((ROOT / "configs/up.yaml").read_text())
    config["data"] = {"class_path": "datamodules.BalancedDataModule", "init_args": {"sources": [
        {"manifest": str(manifests[0]), "modalities": ["image", "text"]},
        {"manifest": [str(manifests[1])], "modalities": ["audio", "text"], "feature_cache": "cache", "repeat": 2}]}}
    (tmp_path / "moe.yaml").write_text(yaml.safe_dump(config))
    stages = [{"name": "moe", "config": str(tmp_path / "moe.yaml")}]

    def staged():
        return plan(PipelineSpec.load(_pipeline(tmp_path, stages)))[0]

    first = staged()
    assert data_sources(first.config) == [(str(manifests[0]), ["image", "text"]), ([str(manifests[1])], ["audio", "text"])]
    assert feature_cache_roots(first.config) == ["cache"]  # the second source's cache counts
    assert staged().hash == first.hash
    manifests[1].write_text('{"id": "b", "split": "train"}\n')
    assert staged().hash != first.hash


def test_pipeline_config_errors_are_named(tmp_path):
    with pytest.raises(PipelineError, match=r"unknown keys \['stage'\]"):
        PipelineSpec.load(_pipeline(tmp_path, [], stage=[]))
    with pytest.raises(PipelineError, match=r"`stages` is empty"):
        PipelineSpec.load(_pipeline(tmp_path, []))
    with pytest.raises(PipelineError, match=r"stage 'audio' starts from an earlier stage's output: .* `start_from`"):
        plan(PipelineSpec.load(_pipeline(tmp_path, [{"name": "audio", "config": str(ROOT / "configs/align_audio.yaml")}])))
    with pytest.raises(PipelineError, match=r"config .*nope.yaml not found"):
        plan(PipelineSpec.load(_pipeline(tmp_path, [{"name": "up", "config": "nope.yaml"}])))
    config = yaml.safe_load((ROOT / "configs/up.yaml").read_text())
    callbacks = config["trainer"]["callbacks"]
    config["trainer"]["callbacks"] = [c for c in callbacks if "StageCheckpoint" not in c["class_path"]]
    (tmp_path / "up.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(PipelineError, match=r"needs a stages.checkpoint.StageCheckpoint callback with `save_last:"):
        resolve_stage_config(StageSpec("up", str(tmp_path / "up.yaml")), tmp_path / "out", None)
    # Lightning's own ModelCheckpoint keeps the best epoch in last.ckpt: a resume would train again.
    config["trainer"]["callbacks"].append({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                           "init_args": {"monitor": "val/loss", "save_last": True}})
    (tmp_path / "up.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(PipelineError, match=r"last.ckpt, not the latest"):
        resolve_stage_config(StageSpec("up", str(tmp_path / "up.yaml")), tmp_path / "out", None)
    up = [{"name": "up", "config": str(ROOT / "configs/up.yaml")}]
    with pytest.raises(PipelineError, match=r"several evaluations need a unique `name` each, .* \(got \['a', 'a'\]\)"):
        PipelineSpec.load(_pipeline(tmp_path, up, evaluation=[{"name": "a", "manifest": "m"}] * 2))
    with pytest.raises(PipelineError, match=r"but for one that may have none \(got \[None, None\]\)"):
        PipelineSpec.load(_pipeline(tmp_path, up, evaluation=[{"manifest": "m"}] * 2))
    with pytest.raises(PipelineError, match=r"evaluation\[1\]: unknown keys \['split_name'\]"):
        PipelineSpec.load(_pipeline(tmp_path, up, evaluation=[{"name": "a", "manifest": "m"}, {"split_name": "x"}]))



def test_malformed_yaml_is_named_by_file_and_line(tmp_path):
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(f"output: {tmp_path / 'out'}\nstages: [{{name: up, config: up.yaml}}\n")
    with pytest.raises(PipelineError) as error:
        PipelineSpec.load(pipeline)
    assert str(error.value) == (f"{pipeline}:3:1: not valid YAML: expected ',' or ']', but got '<stream end>'"
                                " (while parsing a flow sequence from line 2)")
    pipeline.write_text("output: \x01\n")
    named = re.escape(str(pipeline))
    with pytest.raises(PipelineError, match=rf'^{named}: not valid YAML: unacceptable character #x0001.* in "{named}"'):
        PipelineSpec.load(pipeline)
    stage = tmp_path / "up.yaml"
    stage.write_text("model:\n  class_path: stages.UPStage\n   init_args: {}\n")
    with pytest.raises(PipelineError, match=rf"^stage 'up': {re.escape(str(stage))}:3:\d+: not valid YAML: "):
        resolve_stage_config(StageSpec("up", str(stage)), tmp_path / "out", None)
    stage.write_text("- model\n")
    with pytest.raises(PipelineError, match=r"up.yaml is not a mapping; a stage config has `model`, `data`"):
        resolve_stage_config(StageSpec("up", str(stage)), tmp_path / "out", None)

def test_one_evaluation_may_be_written_without_a_list(tmp_path):
    up = [{"name": "up", "config": str(ROOT / "configs/up.yaml")}]
    spec = PipelineSpec.load(_pipeline(tmp_path, up, evaluation={"manifest": "m", "split": "val"}))
    assert [(e.name, e.manifest, e.split) for e in spec.evaluation] == [(None, "m", "val")]


def test_an_evaluation_keeps_its_record_filter_and_grouping_field(tmp_path):
    up = [{"name": "up", "config": str(ROOT / "configs/up.yaml")}]
    evaluations = [{"name": "main", "manifest": "m", "where": {"style": "openmoji"}},
                   {"name": "styles", "manifest": "m", "by": "style"}]
    spec = PipelineSpec.load(_pipeline(tmp_path, up, evaluation=evaluations))
    assert [(e.where, e.by) for e in spec.evaluation] == [({"style": "openmoji"}, None), (None, "style")]
    assert [{k: v for k, v in dataclasses.asdict(e).items() if k in ("name", "where", "by")} for e in spec.evaluation] == [
        {"name": "main", "where": {"style": "openmoji"}, "by": None}, {"name": "styles", "where": None, "by": "style"}]
    with pytest.raises(PipelineError, match=r"evaluation\[0\]: `where` maps record fields to the values to keep"):
        PipelineSpec.load(_pipeline(tmp_path, up, evaluation={"manifest": "m", "where": "style=openmoji"}))
    with pytest.raises(PipelineError, match=r"an evaluation `by` 'style' .* takes no \['templates', 'classes'\]"):
        PipelineSpec.load(_pipeline(tmp_path, up, evaluation={"manifest": "m", "by": "style", "templates": ["a {}"],
                                                              "classes": ["x"]}))


# --- several config files for one stage ---------------------------------------------------------------


def _lightning_namespace(files):
    """What `oneencoder fit --config f1 --config f2 ...` parses, without building anything."""
    from stages.lightning_cli import OneEncoderCLI

    class ParseOnly(OneEncoderCLI):
        def instantiate_classes(self):
            pass

    args = [word for file in files for word in ("--config", str(file))]
    with warnings.catch_warnings():  # about pytest's own sys.argv beside `args`
        warnings.simplefilter("ignore")
        namespace = ParseOnly(subclass_mode_model=True, subclass_mode_data=True, run=False, args=args).config
    namespace.pop("config")  # the file names themselves
    return namespace


def test_several_stage_configs_merge_as_lightning_cli_merges_them(tmp_path):
    """A shared base and small overrides: sections and dataclasses merge key by key, lists are
    replaced, a dict keyed by modality keeps the later file's keys, a new class_path keeps only the
    init_args the new class takes."""
    overrides = {
        "trainer.yaml": {"trainer": {"max_epochs": 2, "callbacks": [
            {"class_path": "stages.checkpoint.StageCheckpoint", "init_args": {"save_last": True}}]}},
        "encoders.yaml": {"model": {"init_args": {"model": {"init_args": {"config": {
            "up_layers": 2, "encoders": {"text": {"vocab": ["a", "b"]}}, "heads": {"text": {"dropout": 0.3}}}}},
            "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"momentum": 0.5}}}}},
        "align.yaml": {"model": {"class_path": "stages.AlignStage", "init_args": {
            "previous": "somewhere", "modality": "audio", "encoder": dataclasses.asdict(tiny_encoder("audio")),
            "head": {"max_positions": 8}}},
            "data": {"init_args": {"modalities": ["audio", "text"], "batch_size": 4}}},
    }
    for name, config in overrides.items():
        (tmp_path / name).write_text(yaml.safe_dump(config))
    for chain in (["trainer.yaml", "encoders.yaml"], ["encoders.yaml", "align.yaml", "trainer.yaml"]):
        files = [ROOT / "configs/up.yaml", *(tmp_path / name for name in chain)]
        merged = merge_stage_configs([yaml.safe_load(Path(f).read_text()) for f in files])
        (tmp_path / "merged.yaml").write_text(yaml.safe_dump(merged))
        assert _lightning_namespace([tmp_path / "merged.yaml"]) == _lightning_namespace(files), chain
    init_args = merged["model"]["init_args"]
    assert "pair" not in init_args and "model" not in init_args  # UPStage's, not AlignStage's
    assert init_args["optimizer"]["init_args"] == {"lr": 0.001, "weight_decay": 0.001, "momentum": 0.5}
    assert merged["trainer"]["callbacks"] == overrides["trainer.yaml"]["trainer"]["callbacks"]
    assert merged["trainer"]["logger"]["init_args"]["name"] == "tensorboard"  # kept from the base


def test_a_stage_with_several_configs_runs_and_hashes_their_merge(tmp_path):
    (tmp_path / "short.yaml").write_text(yaml.safe_dump({"trainer": {"max_epochs": 1}}))
    stages = [{"name": "up", "config": [str(ROOT / "configs/up.yaml"), str(tmp_path / "short.yaml")]}]
    up = plan(PipelineSpec.load(_pipeline(tmp_path, stages)))[0]
    assert up.config["trainer"]["max_epochs"] == 1 and up.config["trainer"]["default_root_dir"] == str(tmp_path / "out/up")
    assert up.config["model"] == yaml.safe_load((ROOT / "configs/up.yaml").read_text())["model"]
    alone = plan(PipelineSpec.load(_pipeline(tmp_path, [{"name": "up", "config": str(ROOT / "configs/up.yaml")}])))[0]
    assert alone.hash != up.hash
    with pytest.raises(PipelineError, match=r"stage 'up': config .*nope.yaml not found"):
        plan(PipelineSpec.load(_pipeline(tmp_path, [{"name": "up", "config": [str(ROOT / "configs/up.yaml"), "nope.yaml"]}])))
    with pytest.raises(PipelineError, match=r"`config` must be a YAML file or a list of them"):
        plan(PipelineSpec.load(_pipeline(tmp_path, [{"name": "up", "config": []}])))


# --- the runner's decisions, with a stand-in for the stage processes -----------------------------------


@pytest.fixture
def fake_fit(monkeypatch):
    """Stage processes replaced by one that exports a tiny model, with a new seed each time (a retrain
    on a GPU may give other weights), and builds no cache; returns the stages it trained, in order."""
    trained = []

    def run_child(command):
        if command[3] == "fit":
            folder = Path(command[command.index("--config") + 1]).parent
            torch.manual_seed(len(trained))
            model = OneEncoder(tiny_model_config())
            model.save_pretrained(folder)
            (folder / "metrics.json").write_text(json.dumps({"trainable_parameters": 1000 + len(trained)}))
            trained.append(folder.name)
        return 0

    monkeypatch.setattr("stages.pipeline.run_child", run_child)
    monkeypatch.setattr("stages.pipeline.build_stage_cache", lambda words: None)
    return trained


@pytest.fixture
def two_stages(tmp_path, shapes_manifest):
    """up -> align-audio on the planted set, evaluated on its test split; returns the pipeline config."""
    stages = []
    for name, config in (("up", "up.yaml"), ("align-audio", "align_audio.yaml")):
        settings = yaml.safe_load((ROOT / "configs" / config).read_text())
        settings["data"]["init_args"]["manifest"] = str(shapes_manifest)
        (tmp_path / config).write_text(yaml.safe_dump(settings))
        stages.append({"name": name, "config": str(tmp_path / config)})
    return _pipeline(tmp_path, stages, evaluation={"manifest": str(shapes_manifest)})


def test_a_finished_stage_whose_model_is_gone_trains_again_and_results_follow_the_new_weights(
        two_stages, fake_fit, capsys):
    output = two_stages.parent / "out"
    run_pipeline(two_stages)
    first = json.loads((output / "results.json").read_text())["hash"]
    run_pipeline(two_stages)
    assert "evaluation: done earlier" in capsys.readouterr().out and fake_fit == ["up", "align-audio"]
    (output / "align-audio/model.safetensors").unlink()
    run_pipeline(two_stages)
    printed = capsys.readouterr().out
    assert fake_fit == ["up", "align-audio", "align-audio"]
    assert "align-audio: its exported model (model.safetensors + config.json) is missing or changed" in printed
    assert [p.name for p in output.glob("align-audio.stale-*")] != []  # what was left is kept
    assert "evaluation: done earlier" not in printed
    assert json.loads((output / "results.json").read_text())["hash"] != first


def test_stage_json_records_time_cost_and_pairs(two_stages, fake_fit):
    run_pipeline(two_stages)
    state = json.loads((two_stages.parent / "out/align-audio/stage.json").read_text())
    assert state["status"] == "done" and state["pairs"] == [["audio", "text"]]
    assert state["trainable_parameters"] == 1001 and isinstance(state["seconds"], float) and state["seconds"] >= 0


def test_the_phases_that_ran_are_timed_in_order_and_a_rerun_times_none_it_skipped(two_stages, fake_fit, capsys,
                                                                                 monkeypatch):
    output = two_stages.parent / "out"
    fit = pipeline.run_child

    def fit_up_in_bf16(command):  # as the trainer's `precision: auto` records its choice
        if Path(command[command.index("--config") + 1]).parent.name == "up":
            (output / "up" / "precision.json").write_text(json.dumps({"precision": "bf16-mixed"}))
        return fit(command)

    monkeypatch.setattr(pipeline, "run_child", fit_up_in_bf16)
    run_pipeline(two_stages)
    phases = [row["phase"] for row in json.loads((output / "timings.json").read_text())["phases"]]
    assert phases == ["up: feature cache", "up: training (bf16-mixed)", "align-audio: feature cache",
                      "align-audio: training", "evaluation"]
    assert "where the time went" in capsys.readouterr().out
    run_pipeline(two_stages)
    assert json.loads((output / "timings.json").read_text())["phases"] == []
    assert "| total | 0s | |" in capsys.readouterr().out


def test_start_from_is_the_first_stages_previous_model_and_counts_in_its_hash(two_stages, fake_fit, capsys):
    output = two_stages.parent / "out"
    run_pipeline(two_stages)
    config = yaml.safe_load(two_stages.read_text())
    later = two_stages.parent / "later.yaml"
    later.write_text(yaml.safe_dump({**config, "output": str(two_stages.parent / "later"), "start_from": str(output / "up"),
                                     "stages": config["stages"][1:]}))
    start = start_model(PipelineSpec.load(later))
    assert start.weights == weights_digest(output / "up") and start.pairs == {frozenset(("image", "text"))}
    align = plan(PipelineSpec.load(later), start)[0]
    assert align.config["model"]["init_args"]["previous"] == str(output / "up")
    run_pipeline(later)
    state = json.loads((two_stages.parent / "later/align-audio/stage.json").read_text())
    assert state["previous_weights"] == start.weights
    results = json.loads((two_stages.parent / "later/results.json").read_text())
    assert results["trained_pairs"] == [["audio", "text"], ["image", "text"]]  # start_from's pair is trained
    # the model it starts from changes: the first stage trains again
    (output / "up/model.safetensors").write_bytes(b"other weights")
    assert plan(PipelineSpec.load(later), start_model(PipelineSpec.load(later)))[0].hash != align.hash
    run_pipeline(later)
    assert fake_fit == ["up", "align-audio", "align-audio", "align-audio"]
    # pairs come from the chain of stage folders: align-audio's own, then up's through `previous`
    (two_stages.parent / "later/align-audio/stage.json").unlink()
    assert model_trained_pairs(two_stages.parent / "later/align-audio") == {frozenset(("image", "text")),
                                                                               frozenset(("audio", "text"))}


def test_start_from_must_hold_a_model_and_feed_a_stage_that_starts_from_one(tmp_path):
    align = [{"name": "audio", "config": str(ROOT / "configs/align_audio.yaml")}]
    with pytest.raises(PipelineError, match=r"start_from: .*nowhere holds no exported model \(model.safetensors"):
        run_pipeline(_pipeline(tmp_path, align, start_from=str(tmp_path / "nowhere")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match=r"start_from: .*empty holds no exported model"):
        run_pipeline(_pipeline(tmp_path, align, start_from=str(tmp_path / "empty")))
    OneEncoder(tiny_model_config()).save_pretrained(tmp_path / "model")
    up = [{"name": "up", "config": str(ROOT / "configs/up.yaml")}]
    with pytest.raises(PipelineError, match=r"stage 'up': start_from is set but this first stage's model"):
        run_pipeline(_pipeline(tmp_path, up, start_from=str(tmp_path / "model")))
    with pytest.raises(PipelineError, match=r"the stage name 'start' is the start_from model's"):
        PipelineSpec.load(_pipeline(tmp_path, [{**align[0], "name": "start"}], start_from="x"))


def test_each_stage_is_evaluated_once_and_the_forgetting_table_follows_the_trained_pairs(two_stages, fake_fit, capsys):
    output = two_stages.parent / "out"
    config = yaml.safe_load(two_stages.read_text())
    two_stages.write_text(yaml.safe_dump({**config, "evaluate_each_stage": True, "report": True}))
    run_pipeline(two_stages)
    printed = capsys.readouterr().out
    assert f"[pipeline] report: {output / 'report.html'}" in printed
    assert {"recall", "joint-space", "similarity", "zero-shot", "forgetting"} <= set(
        json.loads((output / "figures/figures.json").read_text()))
    assert "evaluation of stage up: " in printed and f"the same model as {output / 'results.json'}" in printed
    up = json.loads((output / "up/results.json").read_text())
    assert up["trained_pairs"] == [["image", "text"]]
    assert (output / "align-audio/results.json").read_text() == (output / "results.json").read_text()
    assert (output / "up/results.md").is_file() and (output / "align-audio/results.md").is_file()
    table = json.loads((output / "forgetting.json").read_text())
    assert table["stages"] == ["up", "align-audio"]
    assert table["pairs"]["image->text"]["R@1"] == {stage: json.loads((output / stage / "results.json").read_text())
                                                    ["metrics"]["image->text/R@1"] for stage in ("up", "align-audio")}
    # fake_fit's models have no audio encoder: the pair it trained has no figures
    assert table["pairs"]["audio->text"] == {"trained_at": "align-audio", "R@1": {"align-audio": None},
                                             "R@10": {"align-audio": None}, "change": {"R@1": None, "R@10": None}}
    assert "| image->text | up | R@1 |" in (output / "forgetting.md").read_text()
    run_pipeline(two_stages)  # nothing changed: nothing is evaluated again
    printed = capsys.readouterr().out
    assert printed.count("done earlier for this model and manifest") == 3 and "done in" not in printed


def test_a_style_evaluation_runs_on_the_final_model_only_and_its_filter_keys_the_results(two_stages, fake_fit,
                                                                                          capsys):
    from test_style_eval import write_styled_manifest

    output = two_stages.parent / "out"
    manifest = write_styled_manifest(Path(yaml.safe_load(two_stages.read_text())["evaluation"]["manifest"]),
                                     two_stages.parent, concepts=3)
    evaluations = [{"manifest": str(manifest), "where": {"style": "plain"}},  # the main one: results.md
                   {"name": "styles", "manifest": str(manifest), "by": "style"}]
    config = yaml.safe_load(two_stages.read_text())
    two_stages.write_text(yaml.safe_dump({**config, "evaluation": evaluations, "evaluate_each_stage": True}))
    run_pipeline(two_stages)
    main = json.loads((output / "results.json").read_text())
    assert main["where"] == {"style": "plain"} and main["sizes"]["image->text"] == {"queries": 3, "gallery": 9}
    assert (output / "up/results.json").is_file() and (output / "forgetting.json").is_file()
    styles = json.loads((output / "results-styles.json").read_text())
    assert styles["held_out"] == ["copy"] and styles["metrics"]["plain->copy/image->image/R@1"] == 1.0
    assert "| copy | text->image |" in capsys.readouterr().out
    assert not (output / "up/results-styles.json").exists() and not (output / "forgetting-styles.json").exists()
    two_stages.write_text(yaml.safe_dump({**config, "evaluation": [{**evaluations[0], "where": {"style": "copy"}},
                                                                   evaluations[1]], "evaluate_each_stage": True}))
    run_pipeline(two_stages)  # another filter: evaluated again; the style evaluation is done already
    printed = capsys.readouterr().out
    assert "[pipeline] evaluation: done earlier" not in printed and "evaluation styles: done earlier" in printed
    assert json.loads((output / "results.json").read_text())["where"] == {"style": "copy"}


def test_a_stage_trained_again_trains_the_stages_after_it_again(two_stages, fake_fit, capsys):
    output = two_stages.parent / "out"
    run_pipeline(two_stages)
    (output / "up/model.safetensors").write_bytes(b"other weights")
    run_pipeline(two_stages)
    assert fake_fit == ["up", "align-audio", "up", "align-audio"]
    assert "align-audio: the previous stage's model changed since this stage started from it" in capsys.readouterr().out


def test_unreadable_stage_and_results_files_count_as_absent(two_stages, fake_fit, caplog):
    output = two_stages.parent / "out"
    run_pipeline(two_stages)
    (output / "results.json").write_bytes(b"")  # as a full disk left them before writes were atomic
    (output / "align-audio/stage.json").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="stages.pipeline"):
        run_pipeline(two_stages)
    assert fake_fit == ["up", "align-audio", "align-audio"]
    assert "hash" in json.loads((output / "results.json").read_text())
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "results.json cannot be read" in warned and "stage.json cannot be read" in warned


def test_a_second_runner_on_a_busy_stage_stops_and_names_the_holder(two_stages, fake_fit):
    up = plan(PipelineSpec.load(two_stages))[0]
    with stage_lock(up.lock_path, up.folder):  # another runner, as far as flock is concerned
        with pytest.raises(PipelineError, match=rf"stage folder {up.folder} is in use by another pipeline run"
                                                rf" \(pid {os.getpid()}"):
            run_pipeline(two_stages)
    assert fake_fit == []
    run_pipeline(two_stages)  # the lock went with its holder
    assert fake_fit == ["up", "align-audio"]


# A runner (run_child) whose stage process writes its pid and sleeps; the graceful one ends cleanly
# (exit 0) on SIGTERM, as a stage caught while exporting may.
SLEEPER = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(600)"
GRACEFUL = "import signal, sys; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); " + SLEEPER
RUNNER = ("import sys; from stages.processes import run_child;"
          " sys.exit(run_child([sys.executable, '-c', sys.argv[2], sys.argv[1]]))")


def _alive(pid):
    """Whether `pid` runs (a zombie waiting for a parent to reap it has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def _wait_until(condition, seconds=60):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def _runner_and_its_stage(tmp_path, stage_code=SLEEPER):
    pid_file = tmp_path / "stage.pid"
    runner = subprocess.Popen([sys.executable, "-c", RUNNER, str(pid_file), stage_code],
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert _wait_until(lambda: pid_file.is_file() and pid_file.read_text()), "the stage process never started"
    return runner, int(pid_file.read_text())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_stage_process_dies_with_its_runner(tmp_path):
    runner, stage = _runner_and_its_stage(tmp_path)
    try:
        runner.kill()  # SIGKILL: the runner cannot pass anything on
        runner.wait()
        assert _wait_until(lambda: not _alive(stage)), "the stage process outlived its runner"
    finally:
        if _alive(stage):
            os.kill(stage, signal.SIGKILL)


# A stage child that starts a rank of its own, as a DDP launch does; both run what every command runs first.
RANKS = ("import subprocess, sys, time; from stages.processes import die_with_parent_under_runner;"
         " die_with_parent_under_runner();"
         " subprocess.Popen([sys.executable, '-c', 'from stages.processes import die_with_parent_under_runner;"
         " die_with_parent_under_runner(); ' + sys.argv[2], sys.argv[1]]); time.sleep(600)")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_rank_started_by_the_stage_dies_with_the_runner_too(tmp_path):
    pid_file = tmp_path / "rank.pid"
    stage_code = RANKS.replace("sys.argv[2]", repr(SLEEPER))
    runner = subprocess.Popen([sys.executable, "-c", RUNNER, str(pid_file), stage_code],
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert _wait_until(lambda: pid_file.is_file() and pid_file.read_text()), "the rank never started"
    rank = int(pid_file.read_text())
    try:
        runner.kill()
        runner.wait()
        assert _wait_until(lambda: not _alive(rank)), "a rank outlived the runner"
    finally:
        if _alive(rank):
            os.kill(rank, signal.SIGKILL)


def test_sigterm_to_the_runner_reaches_its_stage_process(tmp_path):
    runner, stage = _runner_and_its_stage(tmp_path)
    try:
        runner.terminate()
        # The runner ends by the signal it was sent, once the stage it passed it on to has ended.
        assert runner.wait(timeout=60) == -signal.SIGTERM
        assert not _alive(stage)
    finally:
        if _alive(stage):
            os.kill(stage, signal.SIGKILL)


def test_a_runner_told_to_stop_stops_even_when_its_stage_ends_cleanly(tmp_path):
    runner, stage = _runner_and_its_stage(tmp_path, GRACEFUL)
    try:
        runner.terminate()
        assert runner.wait(timeout=60) == -signal.SIGTERM  # not 0: no next stage, no evaluation
    finally:
        if _alive(stage):
            os.kill(stage, signal.SIGKILL)


# --- the whole chain, in subprocesses as a user runs it ------------------------------------------------


def _stage_config(name, manifest, root, epochs, **data):
    config = yaml.safe_load((ROOT / "configs" / name).read_text())
    config["trainer"]["max_epochs"] = epochs
    config["trainer"]["enable_progress_bar"] = False
    settings = {"manifest": str(manifest), "batch_size": 32, "num_workers": 0,
                "feature_cache": str(root / f"features-{name}"), **data}
    config["data"]["init_args"].update(settings)
    path = root / name
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture(scope="module")
def chain(shapes_manifest, tmp_path_factory):
    """A two-stage pipeline (up -> align audio) on the planted set, and a way to run it."""
    root = tmp_path_factory.mktemp("pipeline")
    stages = [
        {"name": "up", "config": _stage_config("up.yaml", shapes_manifest, root, epochs=12)},
        {"name": "align-audio", "config": _stage_config("align_audio.yaml", shapes_manifest, root, epochs=8, num_workers=1)},
    ]

    def write(output, **settings):
        path = root / f"{output}.yaml"
        path.write_text(yaml.safe_dump({"output": str(root / output), "stages": stages,
                                        "evaluation": {"manifest": str(shapes_manifest), "split": "test",
                                                       "precision": "auto"},  # as the stages' caches
                                        **settings}))
        return path

    return root, write


def _pipeline_command(config):
    return [sys.executable, "-m", "stages.cli", "pipeline", str(config)]


def _run(config):
    result = subprocess.run(_pipeline_command(config), capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def uninterrupted(chain):
    root, write = chain
    stdout = _run(write("uninterrupted"))
    return root / "uninterrupted", stdout


@pytest.mark.slow
def test_pipeline_evaluates_every_pair_and_transitive_retrieval_is_far_above_chance(uninterrupted):
    output, stdout = uninterrupted
    results = json.loads((output / "results.json").read_text())
    pairs = {name.rsplit("/", 1)[0] for name in results["metrics"]}
    assert pairs == {f"{a}->{b}" for a in ("image", "text", "audio") for b in ("image", "text", "audio") if a != b}
    metrics, chance = results["metrics"], results["chance"]
    print({k: round(v, 3) for k, v in metrics.items() if "R@" in k})
    for pair in ("audio->text", "text->audio", "audio->image", "image->audio"):  # the last two never trained
        assert metrics[f"{pair}/R@10"] > 2.5 * chance[f"{pair}/R@10"], pair
        assert metrics[f"{pair}/MedR"] < chance[f"{pair}/MedR"] / 2, pair
    assert "| audio->image |" in stdout and "no (transitive)" in stdout
    # The test split's captions are read back from align-audio's cache: it was built by the text encoder
    # saved with up's model (the random encoders that the stages build from their configs are other ones).
    assert "evaluation: text features of 288 items read from" in stdout
    assert without_figures((output / "results.md").read_text()) in stdout  # the tables; the figures are files
    assert (output / "report.html").is_file() and (output / "figures" / "joint-space.png").is_file()


@pytest.mark.slow
def test_a_finished_pipeline_is_skipped(chain, uninterrupted):
    output, _ = uninterrupted
    weights = output / "align-audio/model.safetensors"
    stamp = weights.stat().st_mtime_ns
    stdout = _run(chain[1]("uninterrupted"))
    assert stdout.count("done earlier with the same config and inputs, skipping") == 2
    assert "evaluation: done earlier" in stdout
    assert weights.stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_the_frozen_progression_forgets_nothing(chain, uninterrupted):
    """OneEncoder's align stage freezes everything image-text uses: after it, image-text retrieval is
    exactly what it was right after the UP stage."""
    output, _ = uninterrupted
    stdout = _run(chain[1]("uninterrupted", evaluate_each_stage=True))
    assert stdout.count("done earlier with the same config and inputs, skipping") == 2  # stages are not retrained
    for stage in ("up", "align-audio"):
        assert (output / stage / "results.json").is_file() and (output / stage / "results.md").is_file()
    table = json.loads((output / "forgetting.json").read_text())
    assert table["stages"] == ["up", "align-audio"]
    for direction in ("image->text", "text->image"):
        row = table["pairs"][direction]
        assert row["trained_at"] == "up" and row["change"] == {"R@1": 0.0, "R@10": 0.0}, row
        assert row["R@1"]["up"] > 0.1  # well above chance (1/96): the figure that stayed put is a real one
    assert table["pairs"]["audio->text"]["trained_at"] == "align-audio"
    assert (output / "forgetting.md").read_text() in stdout


def _children(pid):
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_stage_whose_runner_alone_is_killed_resumes_and_ends_with_the_uninterrupted_weights(chain, uninterrupted):
    root, write = chain
    config = write("killed")
    checkpoint = root / "killed/align-audio/checkpoints/last.ckpt"
    process = subprocess.Popen(_pipeline_command(config), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        _wait_until(lambda: checkpoint.is_file() or process.poll() is not None, seconds=600)
        stage = _children(process.pid)
    finally:
        process.kill()  # the runner alone: its stage process must not train on behind it
        process.wait()
    gone = _wait_until(lambda: not any(_alive(pid) for pid in stage))
    for pid in filter(_alive, stage):
        os.kill(pid, signal.SIGKILL)
    assert checkpoint.is_file(), "the stage never wrote a checkpoint"
    assert stage and gone, "the stage process outlived its runner"
    assert json.loads((root / "killed/align-audio/stage.json").read_text())["status"] == "running"

    stdout = _run(config)
    assert "up: done earlier" in stdout and f"align-audio: resuming from {checkpoint}" in stdout
    resumed = load_file(str(root / "killed/align-audio/model.safetensors"))
    reference = load_file(str(uninterrupted[0] / "align-audio/model.safetensors"))
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
