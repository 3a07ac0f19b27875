"""A planted synchronous audio-visual set: each item is `steps` time windows of STEP_SECONDS, and in
each window one event, the same in both media: a coloured shape flashing in the video frame and a
tone at the colour's pitch (the pitches of datamodules.shapes) in the sound, or a blank frame and
near silence. Events are drawn per step, so which video step matches which audio step is only
learnable from their contents: the set checks that a per-time-step (fine) alignment finds it.

One frame per step (FPS = 1 / STEP_SECONDS), so a video reader taking `steps` frames gets one per
window. Each item's label is its dominant colour, shown in LABEL_STEPS of its steps where no other
colour shows as often, and labels are balanced within each split: a classifier on pooled features
can learn it. The shape, its place and size, the colour's shade and the tone's pitch and loudness
are jittered, so only the colour carries the event.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Mapping

import numpy as np
import soundfile
from PIL import Image

from .manifest import SPLITS
from .shapes import COLOURS, PITCHES, SAMPLING_RATE, SHAPES, Sprite, paint, write_video

BLANK = "blank"
EVENTS = (BLANK, *COLOURS)
STEP_SECONDS = 0.25
FPS = round(1 / STEP_SECONDS)
LABEL_STEPS = 3  # the dominant colour's steps; every other colour shows at most LABEL_STEPS - 1 times
ITEMS_PER_SPLIT: Mapping[str, int] = {"train": 240, "val": 36, "test": 60}
FADE_SECONDS = 0.01  # tones fade in and out, so a window's edges do not click across its neighbours
NOISE = 0.01  # the faint background noise's standard deviation


def draw_events(label: str, steps: int, rng: random.Random) -> list[str]:
    """`steps` events in which `label` (a colour) is the strict majority colour: LABEL_STEPS of them
    at random steps, the rest blank or other colours, each at most LABEL_STEPS - 1 times."""
    events, counts = [label] * LABEL_STEPS, Counter[str]()
    for _ in range(steps - LABEL_STEPS):
        allowed = [e for e in EVENTS if e != label and (e == BLANK or counts[e] < LABEL_STEPS - 1)]
        event = rng.choice(allowed)
        counts[event] += 1
        events.append(event)
    rng.shuffle(events)
    return events


def frame(event: str, size: int, rng: random.Random) -> np.ndarray:
    """A white frame, with a shape of the event's colour (a shade of it) at a random place unless blank."""
    if event == BLANK:
        return np.asarray(Image.new("RGB", (size, size), (255, 255, 255)))
    radius = rng.uniform(0.2, 0.35) * size
    x, y = (rng.uniform(radius, size - radius) for _ in range(2))
    fill = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in COLOURS[event])
    return np.asarray(paint(rng.choice(SHAPES), size, Sprite(x, y, radius, fill)))


def tone(event: str, rng: np.random.Generator) -> np.ndarray:
    """One step's sound: a sine at the event colour's pitch (jittered 3%), faded in and out; silence
    for a blank step."""
    length = round(SAMPLING_RATE * STEP_SECONDS)
    if event == BLANK:
        return np.zeros(length)
    frequency = PITCHES[event] * rng.uniform(0.97, 1.03)
    wave = rng.uniform(0.5, 0.8) * np.sin(2 * np.pi * (frequency * np.arange(length) / SAMPLING_RATE + rng.uniform()))
    fade = np.minimum(1.0, np.minimum(np.arange(length), np.arange(length)[::-1]) / (FADE_SECONDS * SAMPLING_RATE))
    return wave * fade


def caption(events: list[str]) -> list[str]:
    """The events in order ('nothing' for blank), and the item's label."""
    words = ["nothing" if event == BLANK else event for event in events]
    label = Counter(event for event in events if event != BLANK).most_common(1)[0][0]
    return [f"flashes: {', '.join(words)}", f"mostly {label} flashes with matching tones"]


def write_shapes_av(
    root: str | Path,
    items_per_split: Mapping[str, int] = ITEMS_PER_SPLIT,
    steps: int = 8,
    size: int = 32,
    seed: int = 0,
) -> Path:
    """Writes video/ (mp4, one frame per step), audio/ (16 kHz WAV, STEP_SECONDS per step) and
    manifest.jsonl under `root` (deterministic for the arguments); returns the manifest. Records
    carry `events`, the per-step events, besides id, split, video, audio, text and label."""
    if size <= 0 or size % 2:
        raise ValueError(f"size must be positive and even (got {size}): the videos are yuv420p, which needs even sides")
    if steps < LABEL_STEPS:
        raise ValueError(f"steps must be at least {LABEL_STEPS} (got {steps}): the label colour fills"
                         f" {LABEL_STEPS} steps")
    if set(items_per_split) - set(SPLITS) or any(count < 0 for count in items_per_split.values()):
        raise ValueError(f"items_per_split maps splits {SPLITS} to counts >= 0 (got {dict(items_per_split)})")
    root = Path(root)
    for folder in ("audio", "video"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    event_rng, video_rng, sound_rng = random.Random(seed), random.Random(f"video-{seed}"), np.random.default_rng(seed)
    colours = list(COLOURS)
    lines = []
    for split in SPLITS:
        for index in range(items_per_split.get(split, 0)):
            label = colours[index % len(colours)]  # balanced labels
            events = draw_events(label, steps, event_rng)
            record_id = f"shapes-av-{split}-{index:05d}"
            files = {"video": f"video/{record_id}.mp4", "audio": f"audio/{record_id}.wav"}
            write_video(root / files["video"], [frame(event, size, video_rng) for event in events], FPS)
            sound = np.concatenate([tone(event, sound_rng) for event in events])
            sound += sound_rng.normal(0.0, NOISE, len(sound))
            soundfile.write(root / files["audio"], sound.astype(np.float32), SAMPLING_RATE, subtype="PCM_16")
            lines.append({"id": record_id, "split": split, **files, "text": caption(events), "label": label,
                          "events": events})
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest
