"""Every stage of the shipped demo pipelines parses as LightningCLI reads it (its configs merged in
order), and the stage files hold only what differs from their shared base."""

from pathlib import Path

import pytest
import yaml

from stages.lightning_cli import OneEncoderCLI
from stages.pipeline import PipelineSpec

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = sorted((ROOT / "configs/pipeline").glob("demo*.yaml"))
STAGES = [(pipeline, stage) for pipeline in PIPELINES for stage in PipelineSpec.load(pipeline).stages]


def printed_config(configs: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    """The config `oneencoder fit --config A --config B ... --print_config` prints (parsed in-process:
    with run=False there is no subcommand; --print_config exits before anything is instantiated)."""
    args = [*(word for config in configs for word in ("--config", str(ROOT / config))), "--print_config"]
    with pytest.MonkeyPatch.context() as patch, pytest.raises(SystemExit) as exit_:
        patch.setattr("sys.argv", ["oneencoder"])  # else LightningCLI warns that pytest's own arguments are there
        OneEncoderCLI(subclass_mode_model=True, subclass_mode_data=True, run=False, args=args)
    assert exit_.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize(("pipeline", "stage"), STAGES, ids=lambda x: getattr(x, "stem", getattr(x, "name", "")))
def test_every_demo_stage_parses_with_its_base(pipeline, stage, capsys):
    configs = [stage.config] if isinstance(stage.config, str) else stage.config
    assert configs[0] == "configs/demo/base.yaml"
    config = printed_config(configs, capsys)
    model = config["model"]
    assert model["class_path"] in ("stages.UPStage", "stages.AlignStage", "stages.ProgressiveStage", "stages.CodebookStage")
    assert config["trainer"]["callbacks"][0]["class_path"] == "stages.checkpoint.StageCheckpoint"
    if model["class_path"] == "stages.ProgressiveStage":
        assert config["data"]["class_path"] == "datamodules.BalancedDataModule"
        pairs = {tuple(p) for p in model["init_args"]["pairs"]}
        sources = {tuple(s["modalities"]) for s in config["data"]["init_args"]["sources"]}
        assert pairs == sources  # every pair the stage trains has its source, and no source is left unused
    if model["class_path"] == "stages.CodebookStage":
        modalities = model["init_args"]["modalities"]
        assert config["data"]["init_args"]["modalities"] == modalities
        assert set(config["data"]["init_args"]["feature_cache"]) == set(modalities)  # a cache folder for each


def test_the_codebook_rows_differ_from_fcid_in_what_they_name_only(capsys):
    base = ["configs/demo/base.yaml", "configs/demo/codebook.yaml"]
    fcid = printed_config(base, capsys)["model"]["init_args"]
    vq = printed_config([*base, "configs/demo/codebook_vq.yaml"], capsys)["model"]["init_args"]
    aligned = printed_config([*base, "configs/demo/codebook_aligned.yaml"], capsys)["model"]["init_args"]
    assert {k for k in fcid if fcid[k] != vq[k]} == {"weights"}
    assert {k for k, v in vq["weights"].items() if v} == {"reconstruction"}
    assert {k for k in fcid if fcid[k] != aligned[k]} == {"inputs"} and aligned["inputs"] == "aligned"


def test_the_ablations_differ_from_the_moe_stage_in_what_they_name_only(capsys):
    base = ["configs/demo/base.yaml", "configs/demo/moe_audio.yaml"]
    moe = printed_config(base, capsys)["model"]["init_args"]
    one_expert = printed_config([*base, "configs/demo/ablations/one_expert.yaml"], capsys)["model"]["init_args"]
    random = printed_config([*base, "configs/demo/ablations/random_experts.yaml"], capsys)["model"]["init_args"]
    assert moe["projection"]["experts"] == 3 and one_expert["projection"]["experts"] == 1
    assert {k for k in moe if moe[k] != one_expert[k]} == {"projection"}
    assert {k for k in moe if moe[k] != random[k]} == {"experts_from_up"}
