"""The codebook stage: what trains and what stays frozen, the exported folder, the fine level on a
planted synchronous set, and the features the generalization evaluation reads."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_encoder
from lightning import Trainer
from torch.utils.data import DataLoader

from datamodules import ManifestDataModule
from oneencoder import OneEncoder, OneEncoderConfig
from oneencoder.codebook import CodebookConfig
from oneencoder.codebook_model import CodebookModel, resample_steps
from oneencoder.freezing import state_fingerprint
from oneencoder.model import ModelFolderError
from stages import CodebookStage, LossWeights

MODALITIES = ("audio", "video", "text")


@pytest.fixture(scope="module")
def previous(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("base") / "model"
    config = OneEncoderConfig(encoders={m: tiny_encoder(m) for m in MODALITIES}, embed_dim=32, up_heads=2, up_ff_dim=64)
    OneEncoder(config).save_pretrained(folder)
    return folder


def _stage(previous, **overrides):
    settings = dict(steps=4, hidden_dim=32, codebook=CodebookConfig(codes=16, dim=8), coarse_from_epoch=0, club_steps=2)
    return CodebookStage(str(previous), **{**settings, **overrides})


def _batches(stage, count=3, size=8, length=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        inputs = {m: {"features": torch.randn(size, length, stage.model.base.encoders[m].dim, generator=generator),
                      "mask": torch.ones(size, length, dtype=torch.bool)} for m in MODALITIES}
        batches.append({"inputs": inputs, "size": size})
    return batches


def _fit(stage, batches, epochs=1, **trainer_args):
    loader = DataLoader(batches, batch_size=None)
    trainer = Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, **trainer_args)
    trainer.fit(stage, train_dataloaders=loader, val_dataloaders=loader)
    return trainer


def test_the_earlier_model_is_bit_identical_and_the_codebook_moves(previous):
    stage = _stage(previous)
    base_before = state_fingerprint(stage.model.base)
    codes_before = stage.model.codebook.embedding.clone()
    generic_before = [p.clone() for p in stage.model.generic.parameters()]
    _fit(stage, _batches(stage))
    assert state_fingerprint(stage.model.base) == base_before
    assert not stage.model.base.training
    assert not torch.equal(stage.model.codebook.embedding, codes_before)
    assert any(not torch.equal(a, b) for a, b in zip(generic_before, stage.model.generic.parameters()))


def test_the_main_optimizer_leaves_clubs_to_their_own(previous):
    stage = _stage(previous)
    main, clubs = stage.configure_optimizers()
    in_main = {id(p) for group in main.param_groups for p in group["params"]}
    assert in_main.isdisjoint(id(p) for p in stage.clubs.parameters())
    assert in_main.isdisjoint(id(p) for p in stage.model.base.parameters())
    assert {id(p) for group in clubs.param_groups for p in group["params"]} == {id(p) for p in stage.clubs.parameters()}


def test_plain_vq_has_no_fcid_terms_and_the_coarse_level_waits_for_its_epoch(previous):
    stage = _stage(previous, weights=LossWeights(fine=0, club=0, coarse=0.3), coarse_from_epoch=3)
    out = stage._forward(_batches(stage, count=1)[0])
    _, terms = stage._losses(out, coarse_weight=0.0)
    assert {"fine", "club", "coarse"}.isdisjoint(terms)
    _, terms = stage._losses(out, coarse_weight=0.3)
    assert "coarse" in terms


def test_an_exported_folder_round_trips_with_its_toc_choice(previous, tmp_path):
    stage = _stage(previous, inputs="aligned")
    _fit(stage, _batches(stage))
    model = stage.model.eval()
    model.choose_toc(4)
    model.save_pretrained(tmp_path / "codebook")
    loaded = CodebookModel.from_pretrained(tmp_path / "codebook")
    assert loaded.config == model.config and len(loaded.config.toc) == 4
    batch = _batches(stage, count=1, seed=1)[0]["inputs"]["audio"]
    ours = model.codes_from_features("audio", batch["features"], batch["mask"])
    theirs = loaded.codes_from_features("audio", batch["features"], batch["mask"])
    assert torch.equal(ours.indices, theirs.indices) and torch.equal(ours.quantized, theirs.quantized)
    assert ours.quantized.shape == (8, 4)
    assert not any(k.startswith(("decoders", "clubs", "cpc", "specific")) for k in loaded.state_dict())


def test_a_oneencoder_folder_is_not_a_codebook_folder(previous, tmp_path):
    with pytest.raises(ModelFolderError, match="not a codebook model folder"):
        CodebookModel.from_pretrained(previous)
    with pytest.raises(ModelFolderError, match="is not a folder"):
        CodebookModel.from_pretrained(tmp_path / "missing")


def test_quantize_reads_raw_items(previous, tmp_path):
    stage = _stage(previous)
    indices, quantized = stage.model.quantize("text", ["a red circle", "a blue square"])
    assert indices.shape == (2,) and quantized.shape == (2, 8)
    assert torch.equal(quantized, stage.model.codebook.embedding[indices])


def test_steps_resample_real_tokens_whatever_the_padding():
    tokens = torch.arange(8, dtype=torch.float32).view(1, 8, 1)
    padded = torch.cat([tokens, torch.full((1, 4, 1), 99.0)], 1)
    mask = torch.cat([torch.ones(1, 8, dtype=torch.bool), torch.zeros(1, 4, dtype=torch.bool)], 1)
    assert resample_steps(padded, mask, 4).flatten().tolist() == [0.5, 2.5, 4.5, 6.5]
    short = resample_steps(tokens[:, :2], torch.ones(1, 2, dtype=torch.bool), 4).flatten().tolist()
    assert short == [0.0, 0.0, 1.0, 1.0]


def _synchronous_batches(stage, count, size=32, steps=4, seed=0):
    """Audio and video features whose step t shows the same random event (one of 5) in each
    modality's own random code, plus noise: aligned step by step, and nowhere else."""
    generator = torch.Generator().manual_seed(seed)
    events = {m: torch.randn(5, stage.model.base.encoders[m].dim, generator=torch.Generator().manual_seed(7 + i))
              for i, m in enumerate(MODALITIES)}
    batches = []
    for _ in range(count):
        drawn = torch.randint(5, (size, steps), generator=generator)
        inputs = {}
        for m in MODALITIES:
            features = events[m][drawn] + 0.3 * torch.randn(size, steps, events[m].shape[1], generator=generator)
            inputs[m] = {"features": features, "mask": torch.ones(size, steps, dtype=torch.bool)}
        batches.append({"inputs": inputs, "size": size})
    return batches


def test_the_fine_level_aligns_a_planted_synchronous_set_step_by_step(previous):
    torch.manual_seed(0)
    stage = _stage(previous, codebook=CodebookConfig(codes=16, dim=16), hidden_dim=64, club_steps=1,
                   weights=LossWeights(club=0.0, coarse=0.0, reconstruction=0.0), optimizer=_adam)
    held_out = _synchronous_batches(stage, 4, seed=1)

    def accuracy():
        stage.eval()
        with torch.no_grad():
            return float(torch.stack([stage.cpc.step_accuracy(stage._forward(b)["generic"]) for b in held_out]).mean())

    before = accuracy()
    _fit(stage, _synchronous_batches(stage, 24), epochs=4, limit_val_batches=0)
    after = accuracy()
    # Chance is 1 of 4 steps; an event repeated within an item caps it below 1 (5 events, 4 steps).
    assert before < 0.4 and after > 0.6, (before, after)


def _adam(parameters):
    return torch.optim.Adam(parameters, lr=3e-3)


def test_features_for_generalization_keep_splits_and_labels(previous, tmp_path):
    from datamodules.shapes_av import write_shapes_av
    from stages.codebook_features import extract_features

    manifest = write_shapes_av(tmp_path / "av", {"train": 6, "val": 3, "test": 3}, steps=4, size=32)
    stage = _stage(previous)
    stage.model.save_pretrained(tmp_path / "codebook")
    # Each modality's cache in its own folder, as the demo reads another stage's video cache.
    caches = {"audio": str(tmp_path / "audio-cache"), "video": str(tmp_path / "video-cache")}
    ManifestDataModule(str(manifest), ("audio", "video"), num_workers=0, feature_cache=caches,
                       encoders=stage.model.base.encoders).build_feature_cache()
    assert (tmp_path / "audio-cache/audio/header.json").is_file() and (tmp_path / "video-cache/video/header.json").is_file()
    features = extract_features(tmp_path / "codebook", str(manifest), caches, modalities=("audio", "video"))
    online = extract_features(tmp_path / "codebook", str(manifest), modalities=("audio", "video"))
    assert torch.allclose(features["video"]["test"].continuous, online["video"]["test"].continuous, atol=1e-4)
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    for split in ("train", "val", "test"):
        expected = [r["label"] for r in records if r["split"] == split]
        for m in ("audio", "video"):
            assert features[m][split].labels == expected
            assert features[m][split].quantized.shape == (len(expected), 8)


def test_the_club_bound_is_never_negative_so_encoders_cannot_fool_a_lagging_estimator():
    from stages.fcid import Club

    torch.manual_seed(0)
    club = Club(4, 4, 16)
    x = torch.randn(64, 4)
    with torch.no_grad():
        predicted = club.mean(x)
    assert float(club(x, -10 * predicted)) == 0.0  # anti-predicted: uncut, the bound would be far below 0
    assert float(club(x, predicted + 0.01 * torch.randn(64, 4))) > 0  # predictable: information to remove


@pytest.mark.slow
def test_two_ddp_processes_train_the_stage_and_export(previous, tmp_path):
    from datamodules.shapes_av import write_shapes_av
    from test_cli import ROOT
    from test_ddp import _run

    manifest = write_shapes_av(tmp_path / "av", {"train": 16, "val": 8, "test": 4}, steps=4, size=32)
    out = tmp_path / "out"
    _run(["fit", "--config", ROOT / "configs/demo/base.yaml", "--config", ROOT / "configs/demo/codebook.yaml",
          "--model.init_args.previous", previous, "--model.init_args.steps", "4", "--model.init_args.hidden_dim", "32",
          "--model.init_args.codebook", '{"codes": 16, "dim": 8}', "--data.init_args.manifest", manifest,
          "--data.init_args.feature_cache", "null", "--data.init_args.num_workers", "0",
          "--data.init_args.batch_size", "4", "--trainer.default_root_dir", out, "--trainer.max_epochs", "2",
          "--trainer.accelerator", "cpu", "--trainer.devices", "2",
          "--trainer.strategy", "ddp_find_unused_parameters_true", "--trainer.num_sanity_val_steps", "0"],
         cwd=tmp_path, timeout=300)
    model = CodebookModel.from_pretrained(out)
    assert bool(model.codebook.initialized) and torch.isfinite(model.codebook.embedding).all()


@pytest.mark.slow
def test_the_fine_level_finds_the_synchrony_of_the_planted_media_set(tmp_path, monkeypatch):
    """The shapes AV set's files through the demo's encoders (EfficientNet-Lite0 frames, Whisper): the
    same-step prediction must pick the right step far more often for true pairs than for an item's
    sound against another item's clip (which would score as well if the fine level read only where
    in time each step is)."""
    from datamodules.shapes_av import write_shapes_av
    from oneencoder import EncoderConfig

    monkeypatch.setenv("ONEENCODER_HOME", str(tmp_path / "home"))
    manifest = write_shapes_av(tmp_path / "av", {"train": 160, "val": 16, "test": 48})
    encoders = {
        "audio": EncoderConfig(kind="audio", backend="whisper", pretrained="bundled:whisper-base",
                               processor={"max_seconds": 2.0}),
        "video": EncoderConfig(kind="video", backend="efficientnet", pretrained="bundled:efficientnet-lite0",
                               processor={"num_frames": 8, "frame_stride": 1, "size": 64}),
        "text": EncoderConfig(kind="text", pretrained="bundled:all-MiniLM-L6-v2", processor={"max_length": 16}),
    }
    torch.manual_seed(0)
    OneEncoder(OneEncoderConfig(encoders=encoders, embed_dim=32, up_heads=2, up_ff_dim=64)).save_pretrained(tmp_path / "base")
    stage = CodebookStage(str(tmp_path / "base"), steps=8, hidden_dim=128, codebook=CodebookConfig(codes=32, dim=32),
                          weights=LossWeights(club=0.0, coarse=0.0, reconstruction=0.0), optimizer=_adam)
    data = ManifestDataModule(str(manifest), MODALITIES, batch_size=32, num_workers=0,
                              feature_cache=str(tmp_path / "cache"), encoders=stage.encoders)
    data.build_feature_cache()
    Trainer(max_epochs=15, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, limit_val_batches=0).fit(stage, datamodule=data)
    stage.eval()
    true_pairs, mismatched = [], []
    with torch.no_grad():
        for batch in data.test_dataloader():
            steps = stage._forward(batch)["generic"]
            true_pairs.append(stage.cpc.step_accuracy(steps))
            rolled = {"audio": steps["audio"], "video": steps["video"].roll(1, dims=0)}
            mismatched.append(stage.cpc.step_accuracy(rolled))
    true, control = float(torch.stack(true_pairs).mean()), float(torch.stack(mismatched).mean())
    assert true > 0.4 and true > control + 0.15, (true, control)  # chance: 1 of 8 steps
