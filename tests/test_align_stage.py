"""The align stage: a new modality's Alignment Layer and token train, nothing from before moves."""

import pytest
import torch
from conftest import tiny_encoder, tiny_model_config

from oneencoder import HeadConfig, OneEncoder
from oneencoder.freezing import state_fingerprint
from stages import AlignStage

CAPTIONS = ["a red circle in the top left", "a blue square in the bottom right"]


@pytest.fixture
def previous(tmp_path):
    torch.manual_seed(0)
    OneEncoder(tiny_model_config()).save_pretrained(tmp_path / "up")
    return tmp_path / "up"


def _stage(previous, **kwargs):
    return AlignStage(str(previous), "audio", tiny_encoder("audio"), anchor="text", **kwargs)


def _batch(model, size=6, length=5):
    """Precomputed token features, as batches from a feature cache carry them."""
    batch = {}
    for modality in ("audio", "text"):
        dim = model.encoders[modality].dim
        batch[modality] = {"features": torch.randn(size, length, dim), "mask": torch.ones(size, length, dtype=torch.bool)}
    return {"inputs": batch, "owners": {}, "size": size, "num_skipped": 0, "modalities": ("audio", "text")}


def _new_parameters(stage):
    return {id(p) for p in [*stage.model.heads["audio"].parameters(), *stage.model.tokens["audio"].parameters()]}


def test_only_the_alignment_layer_and_token_train_and_the_optimizer_holds_only_them(previous):
    stage = _stage(previous)
    trainable = {id(p) for p in stage.parameters() if p.requires_grad}
    assert trainable == _new_parameters(stage)
    optimizer = stage.configure_optimizers()
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert held == _new_parameters(stage)

    stage.train()
    loss = stage.losses["audio-text"](*stage.model(_batch(stage.model)["inputs"]).values())["loss"]
    loss.backward()
    with_grad = {id(p) for p in stage.parameters() if p.grad is not None}
    assert with_grad == _new_parameters(stage)


def test_previous_stage_is_bit_identical_after_training_steps(previous):
    before = state_fingerprint(OneEncoder.from_pretrained(previous))
    stage = _stage(previous)
    optimizer = stage.configure_optimizers()
    al_before = {k: v.clone() for k, v in stage.model.heads["audio"].state_dict().items()}
    stage.train()
    for _ in range(3):
        optimizer.zero_grad()
        stage.losses["audio-text"](*stage.model(_batch(stage.model)["inputs"]).values())["loss"].backward()
        optimizer.step()
    model = stage.model
    old = {k: v for k, v in model.state_dict().items() if not k.startswith(("heads.audio.", "tokens.audio."))}
    reference = OneEncoder.from_pretrained(previous)
    reference.load_state_dict(old)
    assert state_fingerprint(reference) == before
    assert any(not torch.equal(v, model.heads["audio"].state_dict()[k]) for k, v in al_before.items())


def test_frozen_parts_stay_in_eval_mode_while_the_new_ones_train(previous):
    stage = _stage(previous)
    stage.train()
    model = stage.model
    assert not model.up.training and not any(m.training for m in model.up.modules())
    assert not model.heads["text"].training and not model.tokens["image"].training
    assert model.heads["audio"].training and model.tokens["audio"].training


def test_old_modalities_embed_exactly_as_before(previous, tmp_path):
    reference = OneEncoder.from_pretrained(previous)
    stage = _stage(previous, head=HeadConfig(hidden_dim=48, dropout=0.2))
    stage.model.save_pretrained(tmp_path / "aligned")
    aligned = OneEncoder.from_pretrained(tmp_path / "aligned")
    assert aligned.modalities == ["image", "text", "audio"]
    assert aligned.config.head("audio") == HeadConfig(hidden_dim=48, dropout=0.2)
    assert torch.equal(aligned.embed("text", CAPTIONS), reference.embed("text", CAPTIONS))


def test_unknown_anchor_and_existing_modality_are_named_errors(previous):
    with pytest.raises(ValueError, match=r"anchor 'audio' is not aligned in .*\['image', 'text'\]"):
        AlignStage(str(previous), "video", tiny_encoder("video"), anchor="audio")
    with pytest.raises(ValueError, match=r"modality 'text' is already in the model"):
        AlignStage(str(previous), "text", tiny_encoder("text"))
    with pytest.raises(FileNotFoundError, match=r"config.json not found"):
        AlignStage(str(previous / "missing"), "audio", tiny_encoder("audio"))
