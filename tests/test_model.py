import pytest
import torch
from conftest import tiny_model_config

from oneencoder import OneEncoder
from oneencoder.freezing import state_fingerprint
from oneencoder.readers import ImageReader

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
