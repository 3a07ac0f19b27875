import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_encoder
from oneencoder.config import EncoderConfig
from oneencoder.encoders import EncoderLoadError, build_encoder


@pytest.mark.parametrize("kind", ["text", "image", "audio", "video"])
def test_encoders_stay_frozen_in_eval_mode(kind):
    encoder = build_encoder(tiny_encoder(kind))
    encoder.train()  # what Lightning does at the start of every epoch
    assert not encoder.training
    assert not any(module.training for module in encoder.modules())
    assert not any(p.requires_grad for p in encoder.parameters())


def _items(kind):
    if kind == "text":
        return ["the blue square is in the top left", "a red circle"]
    if kind == "image":
        return [Image.new("RGB", (40, 30), "red"), Image.new("RGB", (32, 32), "blue")]
    if kind == "audio":
        rng = np.random.default_rng(0)
        return [rng.standard_normal(16000).astype(np.float32), rng.standard_normal(6000).astype(np.float32)]
    frame = np.zeros((36, 36, 3), np.uint8)
    return [[frame] * 4, [frame + 100] * 4]


@pytest.mark.parametrize("kind", ["text", "image", "audio", "video"])
def test_encoder_output_shapes_masks_and_no_grad(kind):
    encoder = build_encoder(tiny_encoder(kind))
    output = encoder(encoder.preprocess(_items(kind)))
    assert output.features.shape[0] == 2 and output.features.shape[2] == encoder.dim == 32
    assert output.mask.shape == output.features.shape[:2] and output.mask.dtype == torch.bool
    assert not output.features.requires_grad
    if kind in ("text", "audio"):  # the shorter item is padded, and only the padding is masked out
        assert output.mask[0].all() and not output.mask[1].all() and output.mask[1, 0]
    else:
        assert output.mask.all()


def test_audio_mask_follows_the_convolution_lengths():
    encoder = build_encoder(tiny_encoder("audio"))
    output = encoder(encoder.preprocess(_items("audio")))
    expected = encoder.model._get_feat_extract_output_lengths(torch.tensor([16000, 6000]))
    assert output.mask.sum(1).tolist() == expected.tolist()


def test_fingerprint_changes_with_preprocessing_and_weights():
    base = build_encoder(tiny_encoder("text"))
    same = build_encoder(tiny_encoder("text"))
    same.load_state_dict(base.state_dict())
    assert base.fingerprint == same.fingerprint
    shorter = tiny_encoder("text")
    shorter.processor = {"max_length": 16}
    other_settings = build_encoder(shorter)
    other_settings.load_state_dict(base.state_dict())
    assert other_settings.fingerprint != base.fingerprint
    assert build_encoder(tiny_encoder("text")).fingerprint != base.fingerprint  # other random weights


def test_missing_pretrained_model_offline_names_model_and_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderLoadError, match=r"'no-such-org/no-such-model'.*HF_HUB_OFFLINE=1"):
        build_encoder(EncoderConfig(kind="text", pretrained="no-such-org/no-such-model"))


def test_encoder_config_needs_exactly_one_source():
    with pytest.raises(ValueError, match="exactly one of `pretrained`"):
        EncoderConfig(kind="text")
