"""The `oneencoder` command as a user runs it, in subprocesses (as DDP needs)."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from datamodules.converters import converter
from oneencoder import OneEncoder, OneEncoderConfig
from stages.cli import DEBUG_VARIABLE, USER_ERRORS, command_name, is_user_mistake, main, report_mistakes
from stages.evaluate import evaluate_folder

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
def test_every_config_parses_and_its_printed_config_round_trips(config, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def print_config(path):  # in this process: the console script's own run is tested below
        with pytest.raises(SystemExit) as exited:
            main(["fit", "--config", str(path), "--print_config"])
        assert exited.value.code in (None, 0), capsys.readouterr().err[-2000:]
        return capsys.readouterr().out

    printed = print_config(config)
    (tmp_path / "printed.yaml").write_text(printed)
    assert yaml.safe_load(print_config(tmp_path / "printed.yaml")) == yaml.safe_load(printed)
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


def _cli(*args, env=None, cwd=None):
    """The CLI in a subprocess, as a user runs it; exit status and stderr."""
    result = subprocess.run([sys.executable, "-m", "stages.cli", *map(str, args)], cwd=cwd or ROOT, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    return result.returncode, result.stderr


def _exit_message(*words) -> str:
    """main() in this process: the one line it exits with."""
    with pytest.raises(SystemExit) as exited:
        main([str(word) for word in words])
    return str(exited.value.code)


def test_user_mistakes_print_one_line_without_a_traceback(tmp_path):
    # The commands .ci's hook runs.
    code, stderr = _cli("evaluate", "no-such-model", "no-such-manifest.jsonl", cwd=tmp_path)
    assert code == 1 and stderr.startswith("oneencoder evaluate: manifest no-such-manifest.jsonl not found")
    assert len(stderr.strip().splitlines()) == 1
    code, stderr = _cli("data", "convert", "no-such-source", "no-such-root", "out.jsonl", cwd=tmp_path)
    assert code == 1 and stderr.startswith("oneencoder data convert: unknown source 'no-such-source'; sources: [")
    assert len(stderr.strip().splitlines()) == 1
    code, stderr = _cli("data", "convert", "esc50", "no-such-root", "out.jsonl", env={DEBUG_VARIABLE: "1"}, cwd=tmp_path)
    assert code == 1 and "Traceback" in stderr and "ConversionError: expected the ESC-50 metadata CSV" in stderr


def test_project_checks_are_user_mistakes_and_library_errors_stay_bugs(tmp_path):
    def error_of(call):
        try:
            call()
        except Exception as error:  # noqa: BLE001 - any exception is what is judged
            return error
        raise AssertionError("no exception")

    assert is_user_mistake(error_of(lambda: OneEncoderConfig(encoders={})))  # a config check of this project
    assert is_user_mistake(error_of(lambda: open(tmp_path / "absent.yaml")))
    assert is_user_mistake(error_of(lambda: converter("esc50")(tmp_path, tmp_path)))  # a ConversionError
    assert is_user_mistake(error_of(lambda: yaml.safe_load("stages: [")))  # a config that is not YAML
    assert not is_user_mistake(error_of(lambda: json.loads("{")))  # a ValueError raised inside a library
    assert not is_user_mistake(error_of(lambda: {}["key"]))
    with pytest.raises(KeyError):
        report_mistakes("oneencoder data convert", lambda: {}["key"])


def test_the_error_line_names_the_command_not_its_options():
    assert command_name(["fit", "--config", "up.yaml"]) == "oneencoder fit"
    assert command_name(["data", "convert", "coco", "root", "out.jsonl"]) == "oneencoder data convert"
    assert command_name(["--config", "up.yaml"]) == "oneencoder"


def test_every_listed_user_error_names_an_exception_class():
    for module, names in USER_ERRORS.items():
        for name in names:
            assert issubclass(getattr(importlib.import_module(module), name), Exception), f"{module}.{name}"


def test_evaluate_checks_the_manifest_and_its_files_before_loading_the_model(tiny_model, shapes_manifest, tmp_path,
                                                                             monkeypatch):
    tiny_model.save_pretrained(tmp_path / "model")
    lines = [json.loads(line) for line in shapes_manifest.read_text().splitlines()]
    records = [{**r, "image": str(shapes_manifest.parent / r["image"])} for r in lines if r["split"] == "test"][:6]
    records[2]["image"] = str(tmp_path / "gone.png")
    manifest = tmp_path / "test.jsonl"
    manifest.write_text("".join(json.dumps({k: r[k] for k in ("id", "split", "text", "image")}) + "\n" for r in records))
    assert _exit_message("evaluate", tmp_path / "model", tmp_path / "none.jsonl").startswith(
        f"oneencoder evaluate: manifest {tmp_path / 'none.jsonl'} not found")
    with monkeypatch.context() as patch:
        patch.setattr(OneEncoder, "from_pretrained", lambda folder: pytest.fail("the model loaded first"))
        message = _exit_message("evaluate", tmp_path / "model", manifest)
        assert _exit_message("evaluate", tmp_path / "model", manifest, "--output", manifest).endswith(
            f"--output {manifest} is a file; give a folder for results.json and results.md")
    assert f"image file {tmp_path / 'gone.png'} does not exist" in message and "--skip_bad_records true" in message

    evaluation = evaluate_folder(tmp_path / "model", str(manifest), skip_bad_records=True)

    assert {(r.name, r.queries, r.gallery_size) for r in evaluation.results} == {("image->text", 5, 15), ("text->image", 15, 5)}  # 3 captions each


def test_a_training_command_reports_a_missing_manifest_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["oneencoder"])  # pytest's own arguments are not the command's
    message = _exit_message("fit", "--config", ROOT / "configs/up.yaml", "--data.init_args.manifest", tmp_path / "x.jsonl",
                            "--trainer.fast_dev_run", "true", "--trainer.logger", "false")
    assert message.startswith(f"oneencoder fit: manifest {tmp_path / 'x.jsonl'} not found")


def test_data_commands_import_neither_lightning_nor_torch(tmp_path):
    (tmp_path / "esc" / "meta").mkdir(parents=True)
    (tmp_path / "esc" / "audio").mkdir()
    (tmp_path / "esc" / "audio" / "1-1-A-0.wav").write_bytes(b"")
    (tmp_path / "esc" / "meta" / "esc50.csv").write_text(
        "filename,fold,target,category,esc10,src_file,take\n1-1-A-0.wav,1,0,dog,True,1,A\n")
    script = (f"import sys, stages.cli; stages.cli.main(['data', 'convert', 'esc50', {str(tmp_path / 'esc')!r},"
              f" {str(tmp_path / 'esc.jsonl')!r}]); print(sorted({{'lightning', 'torch'}} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [f"wrote 1 records to {tmp_path / 'esc.jsonl'} (test 1); skipped: none", "[]"]


def test_evaluate_embeds_without_importing_lightning(tiny_model, shapes_manifest, tmp_path):
    tiny_model.save_pretrained(tmp_path / "model")
    script = (f"import sys, stages.cli; stages.cli.main(['evaluate', {str(tmp_path / 'model')!r},"
              f" {str(shapes_manifest)!r}, '--output', {str(tmp_path / 'results')!r}]);"
              " print('lightning' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "results" / "results.json").exists()  # it did embed
    assert (tmp_path / "results" / "report.html").exists()  # and drew the report beside the results
    assert result.stdout.splitlines()[-1] == "False"
