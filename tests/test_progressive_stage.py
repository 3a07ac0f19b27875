"""ProgressiveStage: a UP turned into a mixture of experts, modalities added, several pairs trained at
once with a loss per pair; `trainable` is the one way of saying what trains."""

from functools import partial

import pytest
import torch
from conftest import tiny_encoder, tiny_model_config
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from datamodules import BalancedDataModule, Source
from oneencoder import OneEncoder, ProjectionConfig
from oneencoder.freezing import state_fingerprint
from stages import AlignStage, NewModality, ProgressiveStage

CAPTIONS = ["a red circle in the top left", "a blue square in the bottom right"]
MOE = ProjectionConfig(kind="moe", experts=3)


@pytest.fixture
def previous(tmp_path):
    torch.manual_seed(0)
    OneEncoder(tiny_model_config()).save_pretrained(tmp_path / "up")
    return tmp_path / "up"


def _moe_stage(previous, **kwargs):
    settings = {"pairs": [("image", "text"), ("audio", "text")], "add": {"audio": NewModality(tiny_encoder("audio"))},
                "projection": MOE, "trainable": ["up", "heads", "tokens"], **kwargs}
    return ProgressiveStage(str(previous), **settings)


def test_experts_copied_from_the_up_start_where_the_up_was(previous):
    stage = _moe_stage(previous)
    stage.eval()
    reference = OneEncoder.from_pretrained(previous)
    assert len(stage.model.up.experts) == 3
    torch.testing.assert_close(stage.model.embed("text", CAPTIONS), reference.embed("text", CAPTIONS))


def test_trainable_names_exactly_what_trains_and_the_rest_stays_in_eval_mode(previous):
    stage = _moe_stage(previous, trainable=["up.routers", "new"])
    trained = {n for n, p in stage.model.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith(("up.routers.", "heads.audio.", "tokens.audio.")) for n in trained)
    assert any(n.startswith("up.routers.image.") for n in trained)
    stage.train()
    assert not any(m.training for m in stage.model.up.experts.modules())
    assert stage.model.heads["audio"].training and not stage.model.heads["image"].training


def test_a_loaded_model_trains_in_train_mode(previous):
    """Lightning keeps the modes modules have: parts loaded in eval mode must still train with dropout."""
    stage = _moe_stage(previous)
    assert all(m.training for m in stage.model.up.experts.modules())
    assert stage.model.heads["image"].training


def test_an_existing_mixture_is_not_silently_changed(previous, tmp_path):
    _moe_stage(previous).model.save_pretrained(tmp_path / "moe")
    with pytest.raises(ValueError, match="already has a moe projection"):
        ProgressiveStage(str(tmp_path / "moe"), [("image", "text")], projection=ProjectionConfig(kind="moe", experts=5))
    with pytest.raises(ValueError, match="adds no modality"):
        ProgressiveStage(str(tmp_path / "moe"), [("image", "text")], trainable=["new"])


def test_align_on_a_mixture_trains_only_the_new_modality_and_old_embeddings_do_not_move(previous, tmp_path):
    _moe_stage(previous).model.save_pretrained(tmp_path / "moe")
    before = state_fingerprint(OneEncoder.from_pretrained(tmp_path / "moe"))
    stage = AlignStage(str(tmp_path / "moe"), "video", tiny_encoder("video"))
    trained = {n for n, p in stage.model.named_parameters() if p.requires_grad}
    assert {n.split(".")[0] + "." + n.split(".")[1] for n in trained} == {"heads.video", "tokens.video", "up.routers"}
    assert all(n.startswith("up.routers.video.") for n in trained if n.startswith("up."))
    old = {k: v for k, v in stage.model.state_dict().items() if "video" not in k}
    reference = OneEncoder.from_pretrained(tmp_path / "moe")
    reference.load_state_dict(old)
    assert state_fingerprint(reference) == before


def test_two_pairs_train_in_turns_with_a_loss_each_val_loss_their_mean_and_router_histograms(shapes_manifest, tmp_path):
    seed_everything(0)
    OneEncoder(tiny_model_config()).save_pretrained(tmp_path / "up")
    stage = _moe_stage(tmp_path / "up", optimizer=partial(torch.optim.AdamW, lr=1e-3))
    sources = [Source(str(shapes_manifest), ("image", "text")), Source(str(shapes_manifest), ("audio", "text"))]
    data = BalancedDataModule(sources, batch_size=16, num_workers=0, encoders=stage.encoders)
    logger = TensorBoardLogger(str(tmp_path / "logs"), name="")
    trainer = Trainer(max_epochs=1, limit_train_batches=4, limit_val_batches=2, accelerator="cpu", logger=logger,
                      log_every_n_steps=1, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False)
    experts_before = state_fingerprint(stage.model.up.experts)
    trainer.fit(stage, datamodule=data)
    metrics = trainer.callback_metrics
    pair_losses = [float(metrics["val/image-text/loss"]), float(metrics["val/audio-text/loss"])]
    assert float(metrics["val/loss"]) == pytest.approx(sum(pair_losses) / 2)
    assert {"val/image->text/R@1", "val/audio->text/R@1"} <= set(metrics)
    assert state_fingerprint(stage.model.up.experts) != experts_before
    events = EventAccumulator(logger.log_dir, size_guidance={"histograms": 0}).Reload()
    assert {f"router/{m}/expert{k}" for m in ("image", "audio", "text") for k in range(3)} <= set(events.Tags()["histograms"])
