"""OneLLM's projection: modality routers, a mixture of UP experts, resample tokens, and the one
freezing mechanism stages use (set_trainable + frozen_to_eval)."""

import dataclasses
import json

import pytest
import torch
from conftest import tiny_encoder, tiny_model_config

from oneencoder import OneEncoder, OneEncoderConfig
from oneencoder.config import ProjectionConfig
from oneencoder.freezing import frozen_to_eval, set_trainable, state_fingerprint
from oneencoder.projection import ModalityRouter, MixtureProjection, UniversalProjection

MOE = ProjectionConfig(kind="moe", experts=3)


def features(batch: int = 3, length: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random encoder features (tiny encoders are 32 wide) with ragged padding."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.arange(length).expand(batch, length) < torch.tensor([length, length - 2, 2])[:batch, None]
    return torch.randn(batch, length, 32, generator=generator), mask


def up_model(**overrides) -> OneEncoder:
    torch.manual_seed(0)
    return OneEncoder(tiny_model_config(**overrides)).eval()


def embeddings(model: OneEncoder, modality: str = "text") -> torch.Tensor:
    with torch.no_grad():
        return model.project(modality, *features())


def test_soft_router_weights_are_per_token_positive_and_sum_to_one():
    torch.manual_seed(0)
    tokens = torch.randn(2, 5, 32)
    weights = ModalityRouter(32, 128, 3)(tokens)
    assert weights.shape == (2, 5, 3)
    assert (weights > 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 5))
    assert not torch.allclose(weights[0, 0], weights[0, 1])  # each token is routed on its own


def test_constant_router_is_exactly_uniform_and_has_no_parameters():
    router = ModalityRouter(32, 128, 4, kind="constant")
    assert list(router.parameters()) == []
    assert torch.equal(router(torch.randn(2, 5, 32)), torch.full((2, 5, 4), 0.25))


def test_one_expert_with_a_constant_router_gives_the_ups_output_exactly():
    model = up_model()
    mixture = model.to_mixture(ProjectionConfig(kind="moe", experts=1, router="constant"))
    assert torch.equal(embeddings(mixture), embeddings(model))
    tokens, mask = torch.randn(3, 6, 32), features()[1]
    assert torch.equal(mixture.up(tokens, mask, "image"), model.up(tokens, mask))


def test_experts_copied_from_the_up_reproduce_its_embeddings_and_fresh_ones_do_not():
    model = up_model()
    copied = model.to_mixture(MOE)
    fresh = model.to_mixture(MOE, experts_from_up=False)
    assert isinstance(copied.up, MixtureProjection) and len(copied.up.experts) == 3
    for modality in ("text", "image"):
        torch.testing.assert_close(embeddings(copied, modality), embeddings(model, modality), atol=1e-5, rtol=0)
        assert not torch.allclose(embeddings(fresh, modality), embeddings(model, modality), atol=1e-3)
    assert copied.encoders["text"] is model.encoders["text"]


def test_to_mixture_refuses_a_mixture_and_a_up_config():
    model = up_model()
    with pytest.raises(ValueError, match="kind 'moe'"):
        model.to_mixture(ProjectionConfig())
    with pytest.raises(ValueError, match="already a mixture"):
        model.to_mixture(MOE).to_mixture(MOE)


def test_routing_gives_each_items_mean_weights_and_none_for_a_up():
    model = up_model()
    assert model.routing("text", *features()) is None
    routing = model.to_mixture(MOE).routing("text", *features())
    assert routing.shape == (3, 3)
    torch.testing.assert_close(routing.sum(-1), torch.ones(3))


def test_a_mixture_folder_round_trips(tmp_path):
    model = up_model(projection={"kind": "moe", "experts": 2, "router_hidden_dim": 16})
    assert model.config.projection == ProjectionConfig(kind="moe", experts=2, router_hidden_dim=16)
    model.save_pretrained(tmp_path / "moe")
    assert json.loads((tmp_path / "moe" / "config.json").read_text())["format_version"] == 2
    loaded = OneEncoder.from_pretrained(tmp_path / "moe")
    # The encoders now load from the folder; everything else is the same config.
    assert dataclasses.replace(loaded.config, encoders=model.config.encoders) == model.config
    assert state_fingerprint(loaded) == state_fingerprint(model)
    assert "up.routers.image.scores.0.weight" in loaded.state_dict()
    for modality in ("text", "image"):
        assert torch.equal(embeddings(loaded, modality), embeddings(model, modality))


def test_a_version_1_folder_loads_as_a_up_and_a_newer_one_is_refused(tmp_path):
    model = up_model()
    model.save_pretrained(tmp_path / "old")
    config = tmp_path / "old" / "config.json"
    payload = json.loads(config.read_text())
    del payload["model"]["projection"]
    config.write_text(json.dumps({**payload, "format_version": 1}))
    loaded = OneEncoder.from_pretrained(tmp_path / "old")
    assert isinstance(loaded.up, UniversalProjection) and loaded.config.projection == ProjectionConfig()
    assert torch.equal(embeddings(loaded), embeddings(model))
    config.write_text(json.dumps({**payload, "format_version": 3}))
    with pytest.raises(ValueError, match="format_version 3; this oneencoder reads up to 2: upgrade"):
        OneEncoder.from_pretrained(tmp_path / "old")


def test_add_modality_to_a_mixture_adds_a_router_and_copies_tokens():
    model = up_model().to_mixture(MOE)
    before = embeddings(model, "text")
    model.add_modality("audio", tiny_encoder("audio"), tokens_from="text")
    assert set(model.up.routers) == {"image", "text", "audio"}
    for name, tensor in model.tokens["text"].state_dict().items():
        assert torch.equal(model.tokens["audio"].state_dict()[name], tensor)
    assert model.routing("audio", *features()).shape == (3, 3)
    assert torch.equal(embeddings(model, "text"), before)
    assert model.modality_parts("audio") == ["heads.audio", "tokens.audio", "up.routers.audio"]
    with pytest.raises(ValueError, match="tokens_from='video' is not a modality"):
        model.add_modality("depth", tiny_encoder("image"), tokens_from="video")
    assert "depth" not in model.modalities


def test_modality_parts_of_a_up_and_of_a_constant_router():
    assert up_model().modality_parts("image") == ["heads.image", "tokens.image"]
    constant = up_model().to_mixture(ProjectionConfig(kind="moe", router="constant"))
    assert constant.modality_parts("image") == ["heads.image", "tokens.image"]  # its router has nothing to train


def test_resample_fusion_embeds_the_mean_of_the_resample_tokens_outputs():
    model = up_model(fusion="resample", num_modality_tokens=4)
    outputs = []
    model.up.register_forward_hook(lambda module, args, output: outputs.append(output))
    tokens, mask = features()
    embedding = model.project("text", tokens, mask)
    expected = torch.nn.functional.normalize(outputs[0][:, :4].mean(1), dim=-1)
    torch.testing.assert_close(embedding, expected)
    # The resample tokens read the content: other content, other embedding; padding changes nothing.
    assert not torch.allclose(model.project("text", tokens + 1, mask), embedding, atol=1e-3)
    padded = torch.cat([tokens, torch.randn(3, 2, 32)], 1), torch.cat([mask, torch.zeros(3, 2, dtype=torch.bool)], 1)
    torch.testing.assert_close(model.project("text", *padded), embedding, atol=1e-5, rtol=1e-5)


def test_projection_config_errors_name_the_setting():
    with pytest.raises(ValueError, match=r"projection.experts must be an integer >= 1 \(got 0\)"):
        ProjectionConfig(kind="moe", experts=0)
    with pytest.raises(ValueError, match=r"projection.kind must be one of \('up', 'moe'\)"):
        ProjectionConfig(kind="mixture")
    with pytest.raises(ValueError, match="projection.router must be one of"):
        ProjectionConfig(kind="moe", router="top1")
    with pytest.raises(ValueError, match=r"projection: ProjectionConfig has unknown keys \['expert'\]"):
        OneEncoderConfig(encoders={"text": tiny_encoder("text")}, projection={"expert": 3})


def test_set_trainable_trains_exactly_the_named_parts():
    model = up_model().to_mixture(MOE)
    set_trainable(model, ["up.experts", "heads.text"])
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad == (name.startswith("up.experts.") or name.startswith("heads.text.")), name
    with pytest.raises(ValueError, match=r"\['up.expert'\] match no parameter.*'up.experts'.*'up.routers.text'"):
        set_trainable(model, ["up.expert"])


def test_frozen_to_eval_turns_off_dropout_in_frozen_parts_only():
    model = up_model()
    model.train()
    set_trainable(model, model.modality_parts("text"))
    frozen_to_eval(model)
    assert not model.up.training and not model.heads["image"].training and not model.tokens["image"].training
    assert model.heads["text"].training and model.training
    # The frozen image path computes as in eval mode; the text head still drops out.
    tokens, mask = features()
    torch.testing.assert_close(model.project("image", tokens, mask), embeddings(model.eval(), "image"))
