"""The planted set's sounds and videos: the promised lengths, deterministic for a seed, and the
caption audible and visible in them (pitch by colour, beeps by place, the colour on screen)."""

import json

import numpy as np
import pytest
import soundfile

from datamodules import VideoReader
from datamodules.shapes import (
    CLIP_SECONDS,
    COLOURS,
    PITCHES,
    PLACES,
    SAMPLING_RATE,
    VIDEO_FRAMES,
    write_shapes_dataset,
)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Only the val and test records: one per (colour, shape, place) each."""
    manifest = write_shapes_dataset(tmp_path_factory.mktemp("a"), train_per_combo=0)
    return manifest.parent, {r["id"]: r for r in map(json.loads, manifest.read_text().splitlines())}


def _sound(root, record):
    waveform, rate = soundfile.read(root / record["audio"], dtype="float32")
    return waveform, rate


def test_every_record_has_a_half_second_mono_sound_and_an_8_frame_video(small):
    root, records = small
    assert len(records) == 192
    for record in records.values():
        info = soundfile.info(root / record["audio"])
        assert (info.samplerate, info.channels, info.frames) == (SAMPLING_RATE, 1, SAMPLING_RATE * CLIP_SECONDS)
    frames = VideoReader(VIDEO_FRAMES)(root / records["red-circle-top-left-val0"]["video"])
    assert len(frames) == VIDEO_FRAMES and frames[0].shape == (32, 32, 3)
    assert not np.array_equal(frames[0], frames[-1])  # the shape moves


def test_same_seed_same_files_other_seed_other_files(small, tmp_path):
    root, records = small
    again = write_shapes_dataset(tmp_path / "again", train_per_combo=0).parent
    other = write_shapes_dataset(tmp_path / "other", train_per_combo=0, seed=1).parent
    for record in list(records.values())[::37]:
        for field in ("image", "audio", "video"):
            assert (root / record[field]).read_bytes() == (again / record[field]).read_bytes()
            assert (root / record[field]).read_bytes() != (other / record[field]).read_bytes()


@pytest.mark.parametrize("shape", ["circle", "square"])
def test_the_colour_is_the_pitch(small, shape):
    root, records = small
    for colour, pitch in PITCHES.items():
        waveform, rate = _sound(root, records[f"{colour}-{shape}-bottom-right-test0"])
        spectrum = np.abs(np.fft.rfft(waveform))
        peak = np.fft.rfftfreq(len(waveform), 1 / rate)[spectrum.argmax()]
        assert peak == pytest.approx(pitch, rel=0.06), colour  # jitter is 3%; neighbours are 74% apart


def test_the_place_is_the_number_of_beeps(small):
    root, records = small
    for count, place in enumerate(PLACES, start=1):
        waveform, _ = _sound(root, records[f"blue-square-{place.replace(' ', '-')}-val0"])
        loud = np.abs(waveform) > 0.2
        assert np.count_nonzero(np.diff(loud.astype(int)) == 1) + loud[0] == count, place


def test_the_video_shows_the_colour_in_its_corner(small):
    root, records = small
    for colour, rgb in COLOURS.items():
        frames = VideoReader(VIDEO_FRAMES)(root / records[f"{colour}-square-top-right-val0"]["video"])
        for frame in frames:
            rows, columns = np.nonzero(frame.min(axis=2) < 150)  # the shape: white is (255, 255, 255)
            row, column = round(rows.mean()), round(columns.mean())
            assert row < 16 <= column, colour
            core = frame[row, column].astype(int)
            assert np.abs(core - rgb).max() < 45, (colour, core)
