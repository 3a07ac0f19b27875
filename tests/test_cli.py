"""The `oneencoder` command as a user runs it, in subprocesses (as DDP needs)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from oneencoder import OneEncoder

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def oneencoder(*args, cwd, timeout=300):
    """Run the CLI in `cwd`, so that the configs' relative output paths land in a tmp folder."""
    result = subprocess.run(
        [sys.executable, "-m", "stages.cli", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_parses_and_its_printed_config_round_trips(config, tmp_path):
    printed = oneencoder("fit", "--config", config, "--print_config", cwd=tmp_path)
    (tmp_path / "printed.yaml").write_text(printed)
    again = oneencoder("fit", "--config", tmp_path / "printed.yaml", "--print_config", cwd=tmp_path)
    assert yaml.safe_load(again) == yaml.safe_load(printed)
    assert yaml.safe_load(printed)["model"]["class_path"].startswith("stages.")


def _stage_args(manifest, out):
    return [
        "--config", ROOT / "configs/up.yaml",
        "--data.init_args.manifest", manifest, "--data.init_args.num_workers", "0",
        "--trainer.default_root_dir", out, "--trainer.logger.init_args.save_dir", out,
    ]


def test_cache_then_fit_from_it_then_output_folder_loads_without_training_code(shapes_manifest, tmp_path):
    out = tmp_path / "up"
    cache = tmp_path / "features"
    args = [*_stage_args(shapes_manifest, out), "--data.init_args.feature_cache", cache]
    assert "feature cache ready" in oneencoder("cache", *args, cwd=tmp_path)
    assert {p.name for p in cache.iterdir()} == {"image", "text"}
    oneencoder("fit", *args, "--trainer.fast_dev_run", "true", cwd=tmp_path)
    model = OneEncoder.from_pretrained(out)
    assert model.embed("text", ["a red circle in the top left"]).shape == (1, 256)


def test_data_command_writes_the_planted_set(tmp_path):
    oneencoder("data", "shapes", tmp_path / "shapes", "--train_per_combo", "1", cwd=tmp_path)
    assert len((tmp_path / "shapes/manifest.jsonl").read_text().splitlines()) == 3 * 96


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_trains_and_exports(shapes_manifest, tmp_path):
    out = tmp_path / "ddp"
    oneencoder(
        "fit", *_stage_args(shapes_manifest, out), "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu",
        "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.enable_checkpointing", "false",
        "--trainer.callbacks", "[]", "--trainer.callbacks+=stages.ExportPretrained", cwd=tmp_path, timeout=600,
    )
    assert (out / "model.safetensors").is_file() and (out / "metrics.json").is_file()


def test_bundled_config_vocabulary_covers_the_planted_captions():
    from datamodules.shapes import VOCAB

    config = yaml.safe_load((ROOT / "configs/up.yaml").read_text())
    text = config["model"]["init_args"]["model"]["init_args"]["config"]["encoders"]["text"]
    assert text["vocab"] == VOCAB
