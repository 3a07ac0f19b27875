import numpy as np
import pytest
import torch
from conftest import tiny_encoder
from PIL import Image

from oneencoder.config import EncoderConfig
from oneencoder.encoders import EncoderLoadError, build_encoder
from oneencoder.encoders.base import folder_digest
from oneencoder.freezing import state_fingerprint


@pytest.mark.parametrize("kind", ["text", "image", "audio", "video"])
def test_encoders_load_weights_only_when_run_and_load_them_frozen(kind):
    encoder = build_encoder(tiny_encoder(kind))
    assert encoder.dim == 32 and encoder.fingerprint.startswith(kind)
    assert not encoder.is_loaded  # config, preprocessor and fingerprint need no weights
    encoder(encoder.preprocess(_items(kind)))
    assert encoder.is_loaded
    assert not any(module.training for module in encoder.module.modules())
    assert not any(p.requires_grad for p in encoder.module.parameters())


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
    expected = encoder.module._get_feat_extract_output_lengths(torch.tensor([16000, 6000]))
    assert output.mask.sum(1).tolist() == expected.tolist()


def _audio(norm: str) -> EncoderConfig:
    config = tiny_encoder("audio")
    config.model_config = {**config.model_config, "feat_extract_norm": norm}
    return config


@pytest.mark.parametrize(
    "config", [tiny_encoder("text"), _audio("layer"), _audio("group")],
    ids=["text", "audio-layer-norm", "audio-group-norm"],
)
def test_an_items_features_are_the_same_alone_and_in_a_padded_batch(config):
    # A group-norm audio model (wav2vec2-base) normalises over the padding too: batched naively, a
    # cached feature would differ from the same item's feature in evaluation.
    encoder = build_encoder(config)
    items = _items(config.kind)[::-1]  # the short item first, padded to the long one
    if config.kind == "audio":  # and two of the same length, encoded together
        items.append(np.random.default_rng(1).standard_normal(6000).astype(np.float32))
    batch = encoder(encoder.preprocess(items))
    for row, item in enumerate(items):
        alone = encoder(encoder.preprocess([item]))
        length = int(alone.mask.sum())
        assert int(batch.mask[row].sum()) == length and batch.mask[row, :length].all()
        torch.testing.assert_close(batch.features[row, :length], alone.features[0, :length], atol=1e-5, rtol=1e-4)


def test_group_norm_audio_features_have_a_fingerprint_of_their_own():
    # Caches of group-norm features made before they were encoded unpadded depended on the batching.
    group, layer = build_encoder(_audio("group")), build_encoder(_audio("layer"))
    assert group.description["encoding"] == {"batching": "equal-length groups, unpadded"}
    assert "encoding" not in layer.description  # every other encoder keeps its fingerprint


def test_a_random_encoder_is_a_function_of_its_config_and_so_is_its_fingerprint():
    torch.manual_seed(0)
    base = build_encoder(tiny_encoder("text"))
    torch.manual_seed(1)  # the global seed does not matter
    same = build_encoder(tiny_encoder("text"))
    assert state_fingerprint(base.module) == state_fingerprint(same.module)
    assert base.fingerprint == same.fingerprint
    shorter = tiny_encoder("text")
    shorter.processor = {"max_length": 16}
    assert build_encoder(shorter).fingerprint != base.fingerprint  # other preprocessing
    wider = tiny_encoder("text")
    wider.model_config = {**wider.model_config, "intermediate_size": 48}
    assert build_encoder(wider).fingerprint != base.fingerprint  # other weights


def test_a_local_folder_fingerprint_follows_its_files(tmp_path):
    build_encoder(tiny_encoder("text")).save_pretrained(str(tmp_path))
    before = build_encoder(EncoderConfig(kind="text", pretrained=str(tmp_path))).fingerprint
    (tmp_path / "config.json").write_text((tmp_path / "config.json").read_text().replace("0.02", "0.03"))
    assert build_encoder(EncoderConfig(kind="text", pretrained=str(tmp_path))).fingerprint != before


def test_missing_pretrained_model_offline_names_model_and_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderLoadError, match=r"'no-such-org/no-such-model'.*HF_HUB_OFFLINE=1"):
        build_encoder(EncoderConfig(kind="text", pretrained="no-such-org/no-such-model"))


def test_encoder_config_needs_exactly_one_source():
    with pytest.raises(ValueError, match="exactly one of `pretrained`"):
        EncoderConfig(kind="text")


def test_an_exported_text_encoder_is_the_same_files_whether_or_not_it_ran(tmp_path):
    unused, used = build_encoder(tiny_encoder("text")), build_encoder(tiny_encoder("text"))
    used.preprocess(["a red circle", "the blue square sits in the top left"])
    unused.save_pretrained(str(tmp_path / "unused"))
    used.save_pretrained(str(tmp_path / "used"))
    assert folder_digest(tmp_path / "unused") == folder_digest(tmp_path / "used")
