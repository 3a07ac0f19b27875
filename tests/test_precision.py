"""`precision: auto`: bf16-mixed on a device that runs bf16 fast, 32-true on one that does not (the
capability mocked both ways), measured once per machine, printed and recorded in the stage folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from oneencoder import precision
from stages.lightning_cli import OneEncoderCLI
from oneencoder.precision import PRECISION_RECORD
from stages.trainer import OneEncoderTrainer

UP_CONFIG = str(Path(__file__).parents[1] / "configs" / "up.yaml")


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ONEENCODER_HOME", str(tmp_path / "home"))


def cpu_with_speedup(monkeypatch, speedup):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "matmul_seconds", lambda dtype: speedup if dtype == torch.float32 else 1.0)


@pytest.mark.parametrize(("speedup", "expected"), [(4.0, "bf16-mixed"), (0.2, "32-true"), (1.2, "32-true")])
def test_a_cpu_gets_bf16_only_where_its_bf16_matmul_is_clearly_faster(monkeypatch, speedup, expected):
    cpu_with_speedup(monkeypatch, speedup)
    choice = precision.choose_precision("auto")
    assert choice.precision == expected and f"{speedup:.2f}x" in choice.reason


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
def test_a_cuda_device_gets_bf16_where_it_supports_it(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "Fake GPU")
    monkeypatch.setattr(precision, "matmul_seconds", lambda dtype: pytest.fail("a GPU run measured the CPU"))
    assert precision.choose_precision("gpu").precision == expected
    cpu_with_speedup(monkeypatch, 0.2)
    assert precision.choose_precision("cpu").precision == "32-true"  # asked for the CPU beside a GPU


def test_the_cpu_is_measured_once_and_a_broken_cache_measured_again(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(precision, "matmul_seconds", lambda dtype: calls.append(dtype) or (3.0 if dtype == torch.float32 else 1.0))
    assert precision.cpu_bf16_speedup() == 3.0 and len(calls) == 2
    assert precision.cpu_bf16_speedup() == 3.0 and len(calls) == 2  # from the cache
    (tmp_path / "home" / "precision.json").write_text("{not json")
    assert precision.cpu_bf16_speedup() == 3.0 and len(calls) == 4


def test_the_measured_matmul_runs_in_the_dtype_asked():
    assert 0 < precision.matmul_seconds(torch.bfloat16, size=64, repeats=2) < 5


@pytest.mark.parametrize(("speedup", "expected"), [(4.0, "bf16-mixed"), (0.2, "32-true")])
def test_the_trainer_resolves_auto_prints_and_records_its_choice(monkeypatch, tmp_path, capsys, speedup, expected):
    cpu_with_speedup(monkeypatch, speedup)
    trainer = OneEncoderTrainer(precision="auto", accelerator="cpu", default_root_dir=tmp_path / "stage", logger=False)
    assert trainer.precision == expected
    assert f"precision auto: {expected}" in capsys.readouterr().out
    record = json.loads((tmp_path / "stage" / PRECISION_RECORD).read_text())
    assert record["requested"] == "auto" and record["precision"] == expected


def test_a_named_precision_is_lightning_s_own_and_records_nothing(monkeypatch, tmp_path):
    monkeypatch.setattr(precision, "matmul_seconds", lambda dtype: pytest.fail("a named precision measured the CPU"))
    trainer = OneEncoderTrainer(precision="32-true", accelerator="cpu", default_root_dir=tmp_path, logger=False)
    assert trainer.precision == "32-true" and not (tmp_path / PRECISION_RECORD).exists()


def _stage_cli(*args):
    with pytest.raises(SystemExit):
        OneEncoderCLI(subclass_mode_model=True, subclass_mode_data=True, run=False, args=["--config", UP_CONFIG, *args])


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")  # pytest's own argv is not meant for it
def test_the_shipped_config_trains_and_caches_in_auto_and_a_misspelt_precision_is_refused(capsys):
    _stage_cli("--print_config")
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["precision"] == "auto" and printed["data"]["init_args"]["cache_precision"] == "auto"
    _stage_cli("--trainer.precision", "bf17-mixed")
    assert "bf17-mixed" in capsys.readouterr().err
    _stage_cli("--data.init_args.cache_precision", "16-mixed")
    assert "16-mixed" in capsys.readouterr().err


def test_resolving_a_cache_precision_measures_only_for_auto(monkeypatch):
    cpu_with_speedup(monkeypatch, 4.0)
    assert precision.resolve_precision("auto", "cpu") == "bf16-mixed"
    monkeypatch.setattr(precision, "matmul_seconds", lambda dtype: pytest.fail("a named precision measured the CPU"))
    assert precision.resolve_precision("32-true", "cpu") == "32-true"
    with pytest.raises(ValueError, match=r"precision must be one of \['auto', 'bf16-mixed', '32-true'\]"):
        precision.resolve_precision("16-mixed")
