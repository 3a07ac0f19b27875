"""The stage runner: resolved stage configs, hashes, and the whole chain on the planted set."""

import pytest
import yaml

from stages.pipeline import PipelineError, PipelineSpec, StageSpec, plan, resolve_stage_config

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def _pipeline(tmp_path, stages, **extra):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"output": str(tmp_path / "out"), "stages": stages, **extra}))
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
    assert dirpaths["ModelCheckpoint"] == str(tmp_path / "out/audio/checkpoints")
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


def test_pipeline_config_errors_are_named(tmp_path):
    with pytest.raises(PipelineError, match=r"unknown keys \['stage'\]"):
        PipelineSpec.load(_pipeline(tmp_path, [], stage=[]))
    with pytest.raises(PipelineError, match=r"`stages` is empty"):
        PipelineSpec.load(_pipeline(tmp_path, []))
    with pytest.raises(PipelineError, match=r"stage 'audio' starts from an earlier stage's output"):
        plan(PipelineSpec.load(_pipeline(tmp_path, [{"name": "audio", "config": str(ROOT / "configs/align_audio.yaml")}])))
    with pytest.raises(PipelineError, match=r"config .*nope.yaml not found"):
        plan(PipelineSpec.load(_pipeline(tmp_path, [{"name": "up", "config": "nope.yaml"}])))
    config = yaml.safe_load((ROOT / "configs/up.yaml").read_text())
    config["trainer"]["callbacks"] = [c for c in config["trainer"]["callbacks"] if "ModelCheckpoint" not in c["class_path"]]
    (tmp_path / "up.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(PipelineError, match=r"needs a ModelCheckpoint callback with `save_last: true`"):
        resolve_stage_config(StageSpec("up", str(tmp_path / "up.yaml")), tmp_path / "out", None)
