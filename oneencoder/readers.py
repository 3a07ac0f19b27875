"""Decoding media files into what the encoders' preprocessors take.

A reader is a small frozen dataclass, so it pickles into dataloader workers, called as
`reader(path, rng)`: `rng` None in evaluation, where reading is deterministic (the first
`max_seconds` of a sound, frames spread over the whole video), and a `random.Random` in training,
where it picks a random window. Every decoding failure is a MediaError naming the file; the data
module turns it into a BadRecordError naming the manifest line, or a counted skip.

Images larger than `max_pixels` (default 50 megapixels, 150 MB decoded) are refused from their header
before decoding: a 69-byte PNG can claim 30000x30000 pixels. PIL's own bomb check then never fires
below that limit; above PIL's hard limit (2 x `PIL.Image.MAX_IMAGE_PIXELS`, 179 MP) it is a MediaError.

Audio decodes with soundfile (libsndfile: wav, flac, mp3, ogg, ...). Video decodes with decord by
default; where decord has no wheel (it ships x86-64 Linux and Windows ones), `pip install av` and
set the data module's `video_backend: pyav` to decode with PyAV (FFmpeg) instead.
"""

from __future__ import annotations

import functools
import importlib
import random
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import numpy as np
import soundfile
import torch
import torchaudio.transforms
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from .encoders.base import Preprocessor

Reader = Callable[[Path, random.Random | None], Any]
READABLE = ("image", "audio", "video")
VIDEO_BACKENDS = {"decord": "decord", "pyav": "av"}  # backend name -> module it imports
PYAV_HINT = "`pip install av` and set the data module's `video_backend: pyav` to decode with PyAV instead"
DEFAULT_MAX_PIXELS = 50_000_000  # 150 MB as RGB; a 12000x4000 panorama still fits
# libsndfile's log line for a WAV `data` / AIFF `SSND` chunk whose size disagrees with the file.
CHUNK_SIZE_MISMATCH = re.compile(r"^\s*(?:data|SSND)\s*:\s*(\d+) \(should be (\d+)\)", re.MULTILINE)
# Writers that stream (ffmpeg to a pipe, some recorders) put a placeholder of about 2 or 4 GiB in the
# chunk size; libsndfile then reads to the end of the file, which is right.
STREAMED_SIZE = 0x7FFF0000


class MediaError(ValueError):
    """A media file could not be decoded."""


class ImageTooLargeError(MediaError):
    """An image's header claims more pixels than the reader's limit (a decompression bomb, or a
    photo too large to decode per item)."""


@dataclass(frozen=True)
class ImageReader:
    """An image file -> an RGB PIL image; one of more than `max_pixels` pixels (None: no limit but
    PIL's) is an ImageTooLargeError, found from the header before anything is decoded."""

    max_pixels: int | None = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.max_pixels is not None and self.max_pixels <= 0:
            raise ValueError(f"max_pixels must be positive or None (got {self.max_pixels})")

    def __call__(self, path: Path, rng: random.Random | None = None) -> Image.Image:
        try:
            with warnings.catch_warnings():
                # `max_pixels` is the policy; PIL's softer DecompressionBombWarning would only be noise.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as image:
                    self._check_size(path, image.size)
                    return image.convert("RGB")
        except ImageTooLargeError:
            raise
        except Image.DecompressionBombError as error:
            raise ImageTooLargeError(
                f"image {path} is too large to decode: {error} Raise PIL.Image.MAX_IMAGE_PIXELS to read it"
            ) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise MediaError(f"cannot decode image {path}: {error}") from None

    def _check_size(self, path: Path, size: tuple[int, int]) -> None:
        width, height = size
        if self.max_pixels is not None and width * height > self.max_pixels:
            raise ImageTooLargeError(
                f"image {path} is {width}x{height} = {width * height:,} pixels ({3 * width * height / 1e6:,.0f} MB"
                f" decoded), more than max_pixels = {self.max_pixels:,}: downscale it, or raise"
                " `max_image_pixels` (data module, `oneencoder evaluate`)"
            )


@dataclass(frozen=True)
class AudioReader:
    """A sound file -> a mono float32 waveform at `sampling_rate`, at most `max_seconds` long.

    Stereo is averaged to mono; more channels are refused rather than guessed at. Only the window
    that is kept gets decoded, so long recordings cost no more than short ones.
    """

    sampling_rate: int
    max_seconds: float | None = None

    def __call__(self, path: Path, rng: random.Random | None = None) -> np.ndarray:
        try:
            with soundfile.SoundFile(path) as audio:
                samples = _read_window(audio, path, self.max_seconds, rng)
                rate = audio.samplerate
        except soundfile.SoundFileError as error:
            raise MediaError(f"cannot decode audio {path}: {error}") from None
        mono = samples.mean(axis=1)
        if not np.isfinite(mono).all():
            raise MediaError(f"audio {path} contains NaN or infinite samples")
        resampled = resample(torch.from_numpy(mono), rate, self.sampling_rate).numpy()
        # Resampling rounds the length up; keep the limit exact.
        return resampled[: _limit(self.max_seconds, self.sampling_rate)]


def resample(waveform: Tensor, rate: int, target: int) -> Tensor:
    """torchaudio's sinc resampling (its defaults, so the same samples as `torchaudio.functional.resample`)
    with the kernel made once per pair of rates: for short clips, remaking it every call took about as
    long as applying it."""
    return waveform if rate == target else _resampler(rate, target, waveform.dtype)(waveform)


@functools.lru_cache(maxsize=16)
def _resampler(rate: int, target: int, dtype: torch.dtype) -> torchaudio.transforms.Resample:
    return torchaudio.transforms.Resample(rate, target, dtype=dtype)


def _check_not_cut(audio: soundfile.SoundFile, path: Path) -> None:
    """A WAV or AIFF file cut short still opens: libsndfile shortens its length to what is there and
    only says so in its log. Refuse it rather than train on part of a sound."""
    match = CHUNK_SIZE_MISMATCH.search(audio.extra_info)
    if match is None:
        return
    promised, present = int(match[1]), int(match[2])
    if present < promised < STREAMED_SIZE:
        raise MediaError(
            f"audio {path} is truncated: its header promises {promised} bytes of samples, the file holds"
            f" {present}: re-export or re-download it"
        )


def _limit(max_seconds: float | None, rate: int) -> int | None:
    return None if max_seconds is None else round(max_seconds * rate)


def _read_window(audio: soundfile.SoundFile, path: Path, max_seconds: float | None, rng: random.Random | None) -> np.ndarray:
    """(samples, channels) float32: the first `max_seconds` (evaluation) or a random such window
    (training); the whole sound when it is shorter."""
    if audio.channels > 2:
        raise MediaError(
            f"audio {path} has {audio.channels} channels; expected mono or stereo: downmix it first"
            " (e.g. `ffmpeg -i IN -ac 1 OUT.wav`)"
        )
    if audio.frames == 0:
        raise MediaError(f"audio {path} has no samples (zero length)")
    _check_not_cut(audio, path)
    limit = _limit(max_seconds, audio.samplerate)
    count = audio.frames if limit is None else min(audio.frames, limit)
    start = 0 if rng is None else rng.randrange(audio.frames - count + 1)
    audio.seek(start)
    samples = audio.read(count, dtype="float32", always_2d=True)
    if len(samples) < count:
        raise MediaError(f"audio {path} is truncated: its header promises {audio.frames} samples, decoding stops early")
    return samples


@dataclass(frozen=True)
class VideoReader:
    """A video file -> `num_frames` HxWx3 uint8 RGB frames (see `frame_indices` for which)."""

    num_frames: int
    frame_stride: int = 4
    backend: str = "decord"

    def __post_init__(self) -> None:
        check_video_backend(self.backend)

    def __call__(self, path: Path, rng: random.Random | None = None) -> list[np.ndarray]:
        def pick(count: int) -> list[int]:
            if count == 0:
                raise MediaError(f"video {path} has no frames")
            return frame_indices(count, self.num_frames, self.frame_stride, rng)

        decode = _decord_frames if self.backend == "decord" else _pyav_frames
        return decode(path, pick)


def frame_indices(count: int, num_frames: int, frame_stride: int, rng: random.Random | None) -> list[int]:
    """Which of `count` frames to take: spread uniformly over the whole video in evaluation, over a
    random window of `num_frames * frame_stride` frames in training (the whole video when it is
    shorter). A video with fewer than `num_frames` frames repeats some."""
    span = count if rng is None else min(count, num_frames * frame_stride)
    start = 0 if rng is None else rng.randrange(count - span + 1)
    return [start + int(offset) for offset in np.linspace(0, span - 1, num_frames).round()]


def check_video_backend(backend: str) -> ModuleType:
    """The backend's module; an unknown or missing backend is a configuration error, not bad media."""
    if backend not in VIDEO_BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; valid backends: {sorted(VIDEO_BACKENDS)}")
    try:
        return importlib.import_module(VIDEO_BACKENDS[backend])
    except ImportError as error:
        hint = PYAV_HINT if backend == "decord" else "`pip install av`"
        raise ImportError(f"the {backend!r} video backend cannot be imported ({error}): {hint}") from None


def _undecodable(path: Path, error: Exception) -> MediaError:
    return MediaError(f"cannot decode video {path}: {str(error).splitlines()[0]}")


def _decord_frames(path: Path, pick: Callable[[int], list[int]]) -> list[np.ndarray]:
    decord = check_video_backend("decord")
    try:
        # One thread each: the dataloader workers are the parallelism.
        video = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        return list(video.get_batch(pick(len(video))).asnumpy())
    except (RuntimeError, decord.DECORDError) as error:
        raise _undecodable(path, error) from None


def _pyav_frames(path: Path, pick: Callable[[int], list[int]]) -> list[np.ndarray]:
    """Decodes from the start up to the last frame wanted, keeping only the wanted ones."""
    av = check_video_backend("pyav")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"cannot decode video {path}: it has no video stream")
            stream = container.streams.video[0]
            stream.thread_count = 1
            count = stream.frames
            if not count:  # the container's header has no frame count: count the packets
                count = sum(1 for packet in container.demux(stream) if packet.size)
                container.seek(0)
            wanted = pick(count)
            last = max(wanted)
            kept: dict[int, np.ndarray] = {}
            for position, frame in enumerate(container.decode(stream)):
                if position in wanted:
                    kept[position] = frame.to_ndarray(format="rgb24")
                if position == last:
                    break
    except av.FFmpegError as error:
        raise _undecodable(path, error) from None
    if last not in kept:
        raise MediaError(f"video {path} is truncated: decoding stops before frame {last}")
    return [kept[index] for index in wanted]


def build_reader(
    modality: str,
    preprocessor: Preprocessor,
    video_backend: str = "decord",
    max_image_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Reader:
    """The reader that makes what this encoder's preprocessor takes (its sampling rate, clip
    length, frame count)."""
    if modality == "image":
        return ImageReader(max_image_pixels)
    if modality == "audio":
        return AudioReader(**preprocessor.reader_settings())
    if modality == "video":
        return VideoReader(**preprocessor.reader_settings(), backend=video_backend)
    raise ValueError(f"no reader for modality {modality!r}; readable: {READABLE}")
