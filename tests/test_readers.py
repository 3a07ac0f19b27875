"""Audio and video readers: formats, resampling, windows, both video backends, and bad media named
as MediaError, which the data module turns into a BadRecordError naming the manifest line."""

import json
import pickle
import random
import struct
import sys
import zlib

import av
import numpy as np
import pytest
import soundfile
from conftest import tiny_encoder
from PIL import Image

from datamodules import (
    AudioReader,
    BadRecordError,
    ImageReader,
    ManifestDataModule,
    MediaError,
    VideoReader,
    build_reader,
)
from datamodules.feature_cache import FeatureCache
from datamodules.manifest import read_manifest
from datamodules.pairs_dataset import PairDataset
from datamodules.shapes import write_shapes_dataset, write_video
from oneencoder.encoders import build_encoder
from oneencoder.readers import ImageTooLargeError, frame_indices, resample
from stages.cli import main

RATE = 16000


def _tone(frequency, seconds=1.0, rate=RATE):
    return (0.5 * np.sin(2 * np.pi * frequency * np.arange(round(seconds * rate)) / rate)).astype(np.float32)


def _peak_hz(waveform, rate=RATE):
    spectrum = np.abs(np.fft.rfft(waveform))
    return np.fft.rfftfreq(len(waveform), 1 / rate)[spectrum.argmax()]


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3"])
def test_wav_flac_and_mp3_decode_to_mono_float32(tmp_path, fmt):
    path = tmp_path / f"tone.{fmt}"
    soundfile.write(path, _tone(440), RATE)
    waveform = AudioReader(RATE)(path)
    assert waveform.dtype == np.float32 and waveform.ndim == 1 and len(waveform) == RATE
    assert _peak_hz(waveform) == pytest.approx(440, abs=2)
    if fmt != "mp3":  # lossless up to 16-bit quantisation
        np.testing.assert_allclose(waveform, _tone(440), atol=1e-4)


def test_resampling_8k_to_16k_keeps_duration_and_pitch(tmp_path):
    path = tmp_path / "low.wav"
    soundfile.write(path, _tone(440, rate=8000), 8000)
    waveform = AudioReader(RATE)(path)
    assert len(waveform) == RATE
    assert _peak_hz(waveform) == pytest.approx(440, abs=2)


@pytest.mark.parametrize("rate", [8000, 22050, 44100])
def test_resampling_with_the_kernel_made_once_gives_torchaudio_s_samples(rate):
    import torch
    import torchaudio.functional

    for seconds in (1.5, 0.3):  # the second clip reuses the first one's kernel
        waveform = torch.randn(int(rate * seconds))
        assert torch.equal(resample(waveform, rate, RATE), torchaudio.functional.resample(waveform, rate, RATE))


def test_stereo_is_averaged_and_more_channels_are_refused(tmp_path):
    stereo = tmp_path / "stereo.wav"
    soundfile.write(stereo, np.stack([_tone(440), np.zeros(RATE, np.float32)], axis=1), RATE)
    np.testing.assert_allclose(AudioReader(RATE)(stereo), _tone(440) / 2, atol=1e-4)
    surround = tmp_path / "surround.wav"
    soundfile.write(surround, np.zeros((RATE, 6), np.float32), RATE)
    with pytest.raises(MediaError, match=r"surround.wav has 6 channels; expected mono or stereo: downmix"):
        AudioReader(RATE)(surround)


def test_max_seconds_keeps_the_start_in_evaluation_and_a_random_window_in_training(tmp_path):
    path = tmp_path / "ramp.wav"
    ramp = np.linspace(-1, 1, RATE, dtype=np.float32)
    soundfile.write(path, ramp, RATE, subtype="FLOAT")
    reader = AudioReader(RATE, max_seconds=0.25)
    np.testing.assert_array_equal(reader(path), ramp[:4000])
    windows = [reader(path, random.Random(seed)) for seed in range(5)]
    for window in windows:
        start = int(np.searchsorted(ramp, window[0]))
        np.testing.assert_array_equal(window, ramp[start : start + 4000])
    np.testing.assert_array_equal(reader(path, random.Random(3)), windows[3])  # the rng decides
    assert len({float(w[0]) for w in windows}) > 1
    assert len(AudioReader(8000, max_seconds=0.25)(path)) == 2000  # the limit is in output samples


def _encoded(tmp_path, fmt):
    path = tmp_path / f"good.{fmt}"
    soundfile.write(path, _tone(440), RATE)
    return path.read_bytes()


BAD_AUDIO = {  # name -> (what makes it, what the error says)
    "empty.wav": (lambda tmp: b"", "cannot decode audio .* Format not recognised"),
    "garbage.wav": (lambda tmp: b"RIFF this is not audio", "cannot decode audio .* Format not recognised"),
    "header-cut.wav": (lambda tmp: _encoded(tmp, "wav")[:20], "cannot decode audio .* Malformed"),
    "cut.flac": (lambda tmp: _encoded(tmp, "flac")[:3000], "cannot decode audio .* lost sync"),
    "cut.mp3": (lambda tmp: _encoded(tmp, "mp3")[:2000], "is truncated: its header promises 16000 samples"),
    "zero.wav": (lambda tmp: np.zeros(0, np.float32), "has no samples"),
    "nan.wav": (lambda tmp: np.array([0.0, np.nan, 0.5], np.float32), "contains NaN or infinite samples"),
}


@pytest.mark.parametrize("name", BAD_AUDIO)
def test_bad_audio_is_a_media_error_naming_the_file_and_the_reason(tmp_path, name):
    make, reason = BAD_AUDIO[name]
    content = make(tmp_path)
    if isinstance(content, bytes):
        (tmp_path / name).write_bytes(content)
    else:
        soundfile.write(tmp_path / name, content, RATE, subtype="FLOAT")
    with pytest.raises(MediaError, match=reason) as caught:
        AudioReader(RATE)(tmp_path / name)
    assert str(tmp_path / name) in str(caught.value)


def test_frame_indices_spread_over_the_video_or_a_random_window():
    assert frame_indices(100, 4, 4, None) == [0, 33, 66, 99]
    assert frame_indices(3, 4, 4, None) == [0, 1, 1, 2]  # short videos repeat frames
    for seed in range(20):
        indices = frame_indices(100, 4, 4, random.Random(seed))
        assert indices == frame_indices(100, 4, 4, random.Random(seed))
        assert 0 <= indices[0] and indices[-1] < 100 and indices[-1] - indices[0] == 15
    assert len({frame_indices(100, 4, 4, random.Random(seed))[0] for seed in range(20)}) > 1
    assert frame_indices(10, 4, 4, random.Random(0)) == frame_indices(10, 4, 4, None)  # window = whole video


@pytest.fixture(scope="module")
def numbered_video(tmp_path_factory):
    """40 flat grey frames, frame i at brightness 6 i, so a decoded frame says which one it is."""
    path = tmp_path_factory.mktemp("video") / "numbered.mp4"
    write_video(path, [np.full((32, 32, 3), 6 * i, np.uint8) for i in range(40)])
    return path


def _which(frames):
    return [round(float(frame.mean()) / 6) for frame in frames]


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_video_reader_takes_the_planned_frames(numbered_video, backend):
    reader = VideoReader(num_frames=4, frame_stride=3, backend=backend)
    frames = reader(numbered_video)
    assert len(frames) == 4 and all(f.shape == (32, 32, 3) and f.dtype == np.uint8 for f in frames)
    assert _which(frames) == frame_indices(40, 4, 3, None) == [0, 13, 26, 39]
    assert _which(reader(numbered_video, random.Random(7))) == frame_indices(40, 4, 3, random.Random(7))


def test_decord_and_pyav_decode_the_same_frames(shapes_manifest):
    path = shapes_manifest.parent / "video" / "blue-triangle-bottom-right-val0.mp4"
    by_decord = VideoReader(8, backend="decord")(path)
    by_pyav = VideoReader(8, backend="pyav")(path)
    assert len(by_decord) == len(by_pyav) == 8
    for a, b in zip(by_decord, by_pyav):
        assert a.shape == b.shape == (32, 32, 3)
        assert np.abs(a.astype(int) - b).max() <= 2


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_bad_video_is_a_media_error_naming_the_file(tmp_path, numbered_video, backend):
    (tmp_path / "garbage.mp4").write_bytes(b"not a video at all")
    (tmp_path / "cut.mp4").write_bytes(numbered_video.read_bytes()[:500])
    with av.open(str(tmp_path / "no-frames.mp4"), "w") as container:
        stream = container.add_stream("mpeg4", rate=16)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        container.start_encoding()
    for name in ("garbage.mp4", "cut.mp4", "no-frames.mp4"):
        with pytest.raises(MediaError, match=rf"cannot decode video .*{name}"):
            VideoReader(4, backend=backend)(tmp_path / name)


def test_video_backend_errors_are_configuration_errors(monkeypatch):
    with pytest.raises(ValueError, match=r"unknown video backend 'opencv'; valid backends: \['decord', 'pyav'\]"):
        VideoReader(4, backend="opencv")
    monkeypatch.setitem(sys.modules, "decord", None)  # as where decord has no wheel
    with pytest.raises(ImportError, match=r"`pip install av` and set the data module's `video_backend: pyav`"):
        VideoReader(4)
    VideoReader(4, backend="pyav")


def test_readers_follow_the_encoders_preprocessing_and_pickle():
    audio = tiny_encoder("audio")
    assert build_reader("audio", build_encoder(audio).preprocessor) == AudioReader(16000, 10.0)
    audio.processor = {"max_seconds": 2.5}
    shorter = build_encoder(audio)
    assert build_reader("audio", shorter.preprocessor) == AudioReader(16000, 2.5)
    assert shorter.fingerprint != build_encoder(tiny_encoder("audio")).fingerprint
    video = tiny_encoder("video")
    video.processor = {"frame_stride": 2}
    reader = build_reader("video", build_encoder(video).preprocessor, video_backend="pyav")
    assert reader == VideoReader(4, 2, "pyav")
    assert pickle.loads(pickle.dumps(reader)) == reader


def test_audio_preprocessor_cuts_waveforms_longer_than_max_seconds():
    config = tiny_encoder("audio")
    config.processor = {"max_seconds": 0.5}
    preprocessor = build_encoder(config).preprocessor
    inputs = preprocessor([np.zeros(RATE, np.float32), np.zeros(4000, np.float32)])
    assert inputs["input_values"].shape == (2, 8000)


@pytest.fixture
def media_set(tmp_path):
    manifest = write_shapes_dataset(tmp_path, train_per_combo=1)
    return manifest, [json.loads(line) for line in manifest.read_text().splitlines()]


def _data(manifest, modality, **kwargs):
    encoders = {modality: build_encoder(tiny_encoder(modality)), "text": build_encoder(tiny_encoder("text"))}
    data = ManifestDataModule(str(manifest), (modality, "text"), batch_size=16, num_workers=0, encoders=encoders, **kwargs)
    data.setup("fit")
    return data


def test_corrupt_audio_names_the_manifest_line_and_file_or_is_counted_when_skipped(media_set):
    manifest, records = media_set
    (manifest.parent / records[0]["audio"]).write_bytes(b"RIFF\x00\x00")
    with pytest.raises(BadRecordError, match=r"manifest.jsonl:1 \(id 'red-circle-top-left-train0'\): cannot decode audio .*red-circle-top-left-train0.wav.*skip_bad_records"):
        for _ in _data(manifest, "audio").train_dataloader():
            pass
    batches = list(_data(manifest, "audio", skip_bad_records=True).train_dataloader())
    assert sum(b["num_skipped"] for b in batches) == 1
    assert batches[0]["inputs"]["audio"]["input_values"].shape[1] == 8000  # 0.5 s at 16 kHz


def test_video_batches_and_draw_keys(media_set):
    manifest, _ = media_set
    data = _data(manifest, "video", video_backend="pyav")
    batch = next(iter(data.val_dataloader()))
    assert batch["inputs"]["video"]["pixel_values"].shape == (16, 4, 3, 32, 32)
    records = read_manifest(manifest)[:3]
    reader = build_reader("video", data.encoders["video"].preprocessor, "pyav")
    train = PairDataset(records, ("video", "text"), skip_bad_records=False, readers={"video": reader})
    first, again = train[(1, 5)], train[(1, 5)]
    assert first["index"] == 1 and first["text"] == [records[1].captions()[5 % 3]]
    assert all(np.array_equal(a, b) for a, b in zip(first["video"][0], again["video"][0]))
    assert train[1]["text"] == records[1].captions()  # an index is evaluation: every caption


def _png_header(width, height):
    """A PNG of a header only: a few dozen bytes that claim width x height RGB pixels."""

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [30000, 12000])  # beyond PIL's hard limit; within it but above ours
def test_an_image_whose_header_claims_too_many_pixels_is_refused_before_decoding(tmp_path, side):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(side, side))
    with pytest.raises(ImageTooLargeError, match=rf"image {path} .*(too large|more than max_pixels = 50,000,000: downscale)"):
        ImageReader()(path)


def test_max_pixels_is_the_image_limit(tmp_path):
    path = tmp_path / "small.png"
    Image.new("RGB", (40, 30)).save(path)
    assert ImageReader(max_pixels=1200)(path).size == (40, 30)
    with pytest.raises(ImageTooLargeError, match=r"40x30 = 1,200 pixels \(0 MB decoded\), more than max_pixels = 1,199"):
        ImageReader(max_pixels=1199)(path)
    assert ImageReader(max_pixels=None)(path).size == (40, 30)


def _wav_with_data_size(tmp_path, size):
    content = bytearray(_encoded(tmp_path, "wav"))
    at = content.index(b"data") + 4
    content[at : at + 4] = struct.pack("<I", size)
    path = tmp_path / "streamed.wav"
    path.write_bytes(content)
    return path


def test_a_wav_cut_short_is_refused_but_a_streamed_one_reads_whole(tmp_path):
    cut = tmp_path / "cut.wav"
    content = _encoded(tmp_path, "wav")
    cut.write_bytes(content[: len(content) // 2])
    # libsndfile opens it and shortens its length to what is there: half the sound, silently.
    with pytest.raises(MediaError, match=rf"audio {cut} is truncated: its header promises 32000 bytes"):
        AudioReader(RATE)(cut)
    for placeholder in (0xFFFFFFFF, 0x7FFFFFFF):  # written by tools that stream; the length is unknown
        assert len(AudioReader(RATE)(_wav_with_data_size(tmp_path, placeholder))) == RATE


def test_a_decompression_bomb_names_the_manifest_line_or_is_counted_when_skipped(media_set):
    manifest, records = media_set
    (manifest.parent / records[0]["image"]).write_bytes(_png_header(30000, 30000))
    where = r"manifest.jsonl:1 \(id 'red-circle-top-left-train0'\)"
    with pytest.raises(BadRecordError, match=rf"{where}: image .* too large"):
        for _ in _data(manifest, "image").train_dataloader():
            pass
    batches = list(_data(manifest, "image", skip_bad_records=True).train_dataloader())
    assert sum(b["num_skipped"] for b in batches) == 1


def test_the_data_modules_image_limit_reaches_the_reader(media_set):
    manifest, records = media_set
    side = Image.open(manifest.parent / records[0]["image"]).width
    batches = list(_data(manifest, "image", skip_bad_records=True, max_image_pixels=side * side - 1).train_dataloader())
    assert sum(b["num_skipped"] for b in batches) == sum(r["split"] == "train" for r in records)


def test_the_image_limit_reaches_oneencoder_evaluate(media_set, tiny_model, tmp_path):
    manifest, _ = media_set
    tiny_model.save_pretrained(tmp_path / "model")
    words = ["evaluate", tmp_path / "model", manifest, "--skip_bad_records", "true", "--max_image_pixels", "1"]
    with pytest.raises(SystemExit) as exited:
        main([str(word) for word in words])
    assert str(exited.value.code).startswith("oneencoder evaluate: none of the 96 records' image items could be read")


def test_the_image_limit_reaches_the_feature_cache_build(media_set, tmp_path):
    manifest, records = media_set
    encoders = {"image": build_encoder(tiny_encoder("image")), "text": build_encoder(tiny_encoder("text"))}
    data = ManifestDataModule(str(manifest), ("image", "text"), num_workers=0, encoders=encoders, skip_bad_records=True,
                              feature_cache=str(tmp_path / "cache"), max_image_pixels=1)
    data.build_feature_cache()
    assert len(FeatureCache(str(tmp_path / "cache" / "image")).skipped) == len(records)
