import json
import os
import re
import shutil

import pytest
import torch
from conftest import tiny_encoder, tiny_model_config
from safetensors.torch import load_file, save_file

from oneencoder import EncoderConfig, HeadConfig, OneEncoder, OneEncoderConfig
from oneencoder.encoders import build_encoder
from oneencoder.freezing import state_fingerprint
from oneencoder.heads import pool_tokens
from oneencoder.model import ModelFolderError
from oneencoder.readers import ImageReader
from stages.cli import main

CAPTIONS = ["a red circle", "the blue square is in the bottom right and sits in the top left"]


@pytest.mark.parametrize("fusion", ["add", "multiply", "concat", "cross_attention"])
def test_embedding_is_the_same_alone_and_in_a_padded_batch(fusion):
    torch.manual_seed(0)
    model = OneEncoder(tiny_model_config(fusion=fusion, num_modality_tokens=3)).eval()
    batch = model.embed("text", CAPTIONS)
    alone = model.embed("text", CAPTIONS[:1])
    assert batch.shape == (2, 32)
    torch.testing.assert_close(batch[:1], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch.norm(dim=-1), torch.ones(2))


def test_padding_changes_nothing_even_after_training_mode_toggles(tiny_model):
    tiny_model.train()
    tiny_model.eval()
    torch.testing.assert_close(tiny_model.embed("text", CAPTIONS)[:1], tiny_model.embed("text", CAPTIONS[:1]), atol=1e-5, rtol=1e-5)


def test_precomputed_features_give_the_same_embeddings(tiny_model):
    inputs = tiny_model.encoders["text"].preprocess(CAPTIONS)
    encoded = tiny_model.encode("text", inputs)
    online = tiny_model({"text": inputs})["text"]
    cached = tiny_model({"text": {"features": encoded.features, "mask": encoded.mask}})["text"]
    torch.testing.assert_close(online, cached, atol=0, rtol=0)


def test_save_load_round_trip_gives_identical_embeddings(tiny_model, tmp_path, shapes_manifest):
    images = [ImageReader()(p) for p in sorted((shapes_manifest.parent / "images").glob("*.png"))[:3]]
    tiny_model.save_pretrained(tmp_path / "model")
    loaded = OneEncoder.from_pretrained(tmp_path / "model")
    assert state_fingerprint(loaded) == state_fingerprint(tiny_model)
    torch.testing.assert_close(loaded.embed("text", CAPTIONS), tiny_model.embed("text", CAPTIONS), atol=0, rtol=0)
    torch.testing.assert_close(loaded.embed("image", images), tiny_model.embed("image", images), atol=0, rtol=0)


def test_loading_a_folder_that_is_not_a_oneencoder_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected a OneEncoder folder"):
        OneEncoder.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="is not a OneEncoder config"):
        OneEncoder.from_pretrained(tmp_path)


def test_config_rejects_unknown_fusion_with_choices():
    with pytest.raises(ValueError, match=r"fusion must be one of .*'add'.*got 'sum'"):
        tiny_model_config(fusion="sum")


@pytest.fixture
def exported(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_an_exported_folder_loads_after_its_sources_are_gone_and_it_is_moved(tiny_model, tmp_path, exported):
    # A second export from the loaded model (an align stage) copies the encoders in, so it needs
    # neither the first folder nor its own old place.
    OneEncoder.from_pretrained(exported).save_pretrained(tmp_path / "second")
    shutil.rmtree(exported)
    moved = shutil.move(tmp_path / "second", tmp_path / "elsewhere" / "second")
    assert str(tmp_path) not in (moved / "config.json").read_text()
    loaded = OneEncoder.from_pretrained(moved)
    torch.testing.assert_close(loaded.embed("text", CAPTIONS), tiny_model.embed("text", CAPTIONS), atol=0, rtol=0)


def test_a_local_encoder_folder_is_copied_in_with_its_fingerprint(tmp_path):
    source = tmp_path / "my-bert"
    build_encoder(tiny_encoder("text")).save_pretrained(str(source))
    encoders = {"text": EncoderConfig(kind="text", pretrained=str(source))}
    config = OneEncoderConfig(encoders=encoders, embed_dim=32, up_heads=2)
    model = OneEncoder(config)
    model.save_pretrained(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "config.json").read_text())["model"]["encoders"]["text"]
    assert saved["pretrained"] == "encoders/text"
    loaded = OneEncoder.from_pretrained(tmp_path / "model")
    # Equal fingerprints: feature caches made with the source serve the copy.
    assert loaded.encoders["text"].fingerprint == model.encoders["text"].fingerprint
    expected = model.embed("text", CAPTIONS)
    shutil.rmtree(source)
    torch.testing.assert_close(loaded.embed("text", CAPTIONS), expected, atol=0, rtol=0)


@pytest.mark.skipif(bool(os.umask(os.umask(0)) & 0o044), reason="this umask hides files from others")
def test_an_exported_folder_is_readable_by_others(exported):
    for path in [exported, *exported.rglob("*")]:
        assert path.stat().st_mode & 0o044 == 0o044, path


def test_a_folder_without_its_encoders_says_it_is_incomplete(exported):
    shutil.rmtree(exported / "encoders")
    expected = rf"{exported} is incomplete: its image encoder should be at .*encoders/image,"
    with pytest.raises(ModelFolderError, match=expected):
        OneEncoder.from_pretrained(exported)


def test_oneencoder_evaluate_reports_an_incomplete_folder_in_one_line(exported, shapes_manifest):
    shutil.rmtree(exported / "encoders" / "text")
    with pytest.raises(SystemExit) as exited:
        main(["evaluate", str(exported), str(shapes_manifest), "--modalities", "[image]"])
    assert str(exited.value.code).startswith(f"oneencoder evaluate: {exported} is incomplete: its text encoder")


def test_damaged_or_misshaped_weights_name_the_file(exported):
    weights = exported / "model.safetensors"
    state = {name: tensor.clone() for name, tensor in load_file(weights).items()}  # not a map of the file cut below
    content = weights.read_bytes()
    weights.write_bytes(content[: len(content) // 2])
    with pytest.raises(ModelFolderError, match=rf"{weights} is not a readable safetensors file"):
        OneEncoder.from_pretrained(exported)
    name = next(iter(state))
    save_file({**state, name: torch.zeros(3)}, weights)
    with pytest.raises(ModelFolderError, match=rf"{weights} does not match its config.json: .*{re.escape(name)}"):
        OneEncoder.from_pretrained(exported)


@pytest.mark.parametrize("damage", ["not json", "missing field"])
def test_a_damaged_config_names_the_file_and_the_problem(exported, damage):
    config = exported / "config.json"
    payload = json.loads(config.read_text())
    if damage == "not json":
        config.write_text(config.read_text()[:100])
        expected = "is not valid JSON"
    else:
        del payload["model"]["encoders"]["image"]["kind"]
        config.write_text(json.dumps(payload))
        expected = r"the model config is invalid .*encoders.image: EncoderConfig has missing required keys \['kind'\]"
    with pytest.raises(ModelFolderError, match=rf"{config}: ?{expected}".replace(": ?is", " is")):
        OneEncoder.from_pretrained(exported)


def test_pooled_tokens_average_real_tokens_only():
    tokens = torch.arange(1.0, 6.0).view(1, 5, 1)
    mask = torch.tensor([[True, True, True, False, False]])
    pooled, pooled_mask = pool_tokens(tokens, mask, 2)
    assert pooled.flatten().tolist() == [1.5, 3.0, 0.0]
    assert pooled_mask.tolist() == [[True, True, False]]


def test_a_pooled_head_embeds_an_item_the_same_whatever_padding_its_batch_adds():
    torch.manual_seed(0)
    model = OneEncoder(tiny_model_config(heads={"image": HeadConfig(pool=3)})).eval()
    features = torch.randn(1, 7, model.encoders["image"].dim)
    alone = model.project("image", features, torch.ones(1, 7, dtype=torch.bool))
    padded = torch.cat([features, torch.randn(1, 5, features.shape[-1])], dim=1)
    mask = torch.tensor([[True] * 7 + [False] * 5])
    torch.testing.assert_close(model.project("image", padded, mask), alone)
    with pytest.raises(ValueError, match="`pool` must be an integer >= 1"):
        HeadConfig(pool=0)
