"""Audio-visual event data for the codebook stage: the OpenMoji AV manifest (each clip with its
emoji's spoken name and captions) and the planted synchronous shapes AV set, read with the demo's
own preprocessors' readers (Whisper's 16 kHz audio, EfficientNet's 8-frame video)."""

import json
import shutil
from collections import Counter

import numpy as np
import pytest

from datamodules import read_manifest
from datamodules.openmoji import AV_EVENTS_NAME, OpenMojiError, build_openmoji, write_av_events
from datamodules.shapes import COLOURS, PITCHES
from datamodules.shapes_av import BLANK, FPS, LABEL_STEPS, STEP_SECONDS, write_shapes_av
from oneencoder.encoders.efficientnet import EfficientNetPreprocessor
from oneencoder.encoders.whisper import WhisperPreprocessor
from oneencoder.readers import build_reader

STEPS, SIZE = 8, 32
ITEMS = {"train": 12, "val": 6, "test": 6}


def _emoji(hexcode, split, name, label):
    return {"id": hexcode, "split": split, "text": [name, f"an emoji of {name}"], "image": f"images/{hexcode}.png",
            "audio": f"audio/{hexcode}.wav", "label": label}


def _clip(hexcode, split, name, motion, label):
    return {"id": f"{hexcode}/{motion}", "split": split, "text": [f"{name} {motion}"],
            "video": f"video/{hexcode}-{motion}.mp4", "label": label}


OPENMOJI = [
    _emoji("1F600", "train", "grinning face", "smileys and emotion"),
    _emoji("1F436", "test", "dog face", "animals and nature"),
    _emoji("2764", "val", "red heart", "symbols"),
    _emoji("1F34E", "train", "red apple", "food and drink"),
    _clip("1F436", "test", "dog face", "pan_left", "animals and nature"),
    _clip("1F600", "train", "grinning face", "zoom_in", "smileys and emotion"),
    _clip("2764", "val", "red heart", "rotate_clockwise", "symbols"),
]


@pytest.fixture
def openmoji(tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(record) + "\n" for record in OPENMOJI))
    return manifest


def test_one_av_event_per_clip_with_its_emojis_sound_and_captions_in_clip_order(openmoji):
    before = openmoji.read_bytes()
    events = read_manifest(write_av_events(openmoji))
    assert openmoji.read_bytes() == before
    assert events[0].manifest == openmoji.parent / AV_EVENTS_NAME
    clips = [record for record in OPENMOJI if "video" in record]
    emoji = {record["id"]: record for record in OPENMOJI if "video" not in record}
    assert [(e.id, e.split) for e in events] == [(c["id"], c["split"]) for c in clips]
    for event, clip in zip(events, clips):
        own = emoji[clip["id"].split("/")[0]]
        assert event.fields == {"video": clip["video"], "audio": own["audio"], "text": own["text"],
                                "label": own["label"]}


def test_av_events_are_rewritten_only_when_they_change(openmoji):
    target = write_av_events(openmoji)
    stamp, data = target.stat().st_mtime_ns, target.read_bytes()
    assert write_av_events(openmoji) == target
    assert (target.stat().st_mtime_ns, target.read_bytes()) == (stamp, data)


def test_a_clip_without_its_emoji_is_named(tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(json.dumps(OPENMOJI[-1]) + "\n")
    with pytest.raises(OpenMojiError, match=r"manifest.jsonl:1 \(id '2764/rotate_clockwise'\).*emoji 2764"):
        write_av_events(manifest)


@pytest.mark.skipif(not (shutil.which("rsvg-convert") and shutil.which("espeak-ng")), reason="needs the build tools")
def test_the_build_writes_the_av_events_last(tmp_path):
    from test_openmoji import make_package

    manifest = build_openmoji(tmp_path / "root", make_package(tmp_path), size=32, limit=3,
                              video_per_split={"train": 1, "val": 1, "test": 1})
    written = (manifest.parent / AV_EVENTS_NAME).read_bytes()
    assert written and write_av_events(manifest).read_bytes() == written
    assert len(written.splitlines()) == sum("video" in r.fields for r in read_manifest(manifest))


@pytest.fixture(scope="module")
def shapes_av(tmp_path_factory):
    manifest = write_shapes_av(tmp_path_factory.mktemp("shapes_av"), ITEMS, steps=STEPS, size=SIZE, seed=3)
    return manifest, read_manifest(manifest)


def test_items_are_split_and_labelled_by_their_dominant_colour(shapes_av):
    _, records = shapes_av
    assert Counter(r.split for r in records) == ITEMS
    for split in ITEMS:
        labels = Counter(r.fields["label"] for r in records if r.split == split)
        assert max(labels.values()) - min(labels.values()) <= 1 and len(labels) == len(COLOURS)
    for record in records:
        events = record.fields["events"]
        colours = Counter(event for event in events if event != BLANK)
        assert len(events) == STEPS and colours[record.fields["label"]] == LABEL_STEPS
        assert all(count < LABEL_STEPS for colour, count in colours.items() if colour != record.fields["label"])
        assert ", ".join(e if e != BLANK else "nothing" for e in events) in record.captions()[0]
    assert len({tuple(r.fields["events"]) for r in records}) == len(records)  # per-step contents differ


def _nearest_colour(pixels: np.ndarray) -> str:
    ink = pixels[pixels.astype(int).sum(axis=1) < 600]  # not white
    if len(ink) < 10:
        return BLANK
    mean = ink.astype(float).mean(axis=0)
    return min(COLOURS, key=lambda colour: np.abs(mean - COLOURS[colour]).sum())


def _pitch_event(window: np.ndarray) -> str:
    spectrum = np.abs(np.fft.rfft(window * np.hanning(len(window))))
    if spectrum.max() < 20 * np.median(spectrum):
        return BLANK
    peak = np.fft.rfftfreq(len(window), 1 / 16000)[spectrum.argmax()]
    return min(PITCHES, key=lambda colour: abs(np.log(peak / PITCHES[colour])))


def test_each_steps_frame_and_tone_show_the_same_event_in_the_demo_readers(shapes_av):
    manifest, records = shapes_av
    video = build_reader("video", EfficientNetPreprocessor(num_frames=STEPS))
    audio = build_reader("audio", WhisperPreprocessor(max_seconds=4.0))
    step = round(16000 * STEP_SECONDS)
    assert FPS * STEP_SECONDS == 1
    for record in records:
        frames, sound = video(record.path("video")), audio(record.path("audio"))
        assert len(frames) == STEPS and frames[0].shape == (SIZE, SIZE, 3) and len(sound) == STEPS * step
        seen = [_nearest_colour(frame.reshape(-1, 3)) for frame in frames]
        heard = [_pitch_event(sound[t * step:(t + 1) * step]) for t in range(STEPS)]
        assert seen == heard == record.fields["events"], record.id


def test_the_set_is_deterministic_for_a_seed(shapes_av, tmp_path):
    manifest, _ = shapes_av
    again = write_shapes_av(tmp_path / "again", ITEMS, steps=STEPS, size=SIZE, seed=3)
    files = sorted(path.relative_to(manifest.parent) for path in manifest.parent.rglob("*") if path.is_file())
    assert files == sorted(path.relative_to(again.parent) for path in again.parent.rglob("*") if path.is_file())
    assert all((manifest.parent / name).read_bytes() == (again.parent / name).read_bytes() for name in files)
    other = write_shapes_av(tmp_path / "other", ITEMS, steps=STEPS, size=SIZE, seed=4)
    assert other.read_bytes() != manifest.read_bytes()
