"""A planted set: coloured shapes in one of four corners, captioned by colour, shape and place, each
as an image, a sound and a short video. Every caption is fully determined by each of its media, so
a working model must reach R@1 near 1; the test split holds one record per (colour, shape, place),
so chance R@1 is 1/96.

The sounds encode the caption coarsely enough for tiny random encoders: the colour is the pitch
(six tones 0.8 octave apart), the shape the waveform (sine, square, sawtooth, pulse train), the
place the number of beeps (1 to 4). The videos show the image's shape drifting a little.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from pathlib import Path

import av
import numpy as np
import soundfile
from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 210, 20),
    "purple": (140, 40, 170),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle", "cross")
PLACES = {"top left": (0, 0), "top right": (1, 0), "bottom left": (0, 1), "bottom right": (1, 1)}
TEMPLATES = (
    "a {colour} {shape} in the {place}",
    "{place} : {colour} {shape}",
    "the {shape} is {colour} and sits in the {place}",
)


def captions(colour: str, shape: str, place: str) -> list[str]:
    return [template.format(colour=colour, shape=shape, place=place) for template in TEMPLATES]


VOCAB = sorted({word for c in COLOURS for s in SHAPES for p in PLACES for line in captions(c, s, p) for word in line.split()})
"""Every word the captions use: the vocabulary of the tiny text encoder in configs/up.yaml."""


SAMPLING_RATE = 16000
CLIP_SECONDS = 0.5
VIDEO_FRAMES = 8
VIDEO_FPS = 16  # 8 frames: half a second, like the sounds
PITCHES = {colour: 200 * 16 ** (index / 5) for index, colour in enumerate(COLOURS)}  # 200 Hz to 3.2 kHz
WAVEFORMS = {  # phase in [0, 1) -> one period of the shape's waveform
    "circle": lambda phase: np.sin(2 * np.pi * phase),
    "square": lambda phase: np.where(phase < 0.5, 1.0, -1.0),
    "triangle": lambda phase: 2 * phase - 1,  # sawtooth
    "cross": lambda phase: np.where(phase < 0.1, 1.0, -0.1),  # pulse train
}


@dataclass(frozen=True)
class Sprite:
    """One shape's drawn position, size and colour."""

    x: float
    y: float
    radius: float
    fill: tuple[int, ...]


def sprite(colour: str, place: str, size: int, rng: random.Random) -> Sprite:
    """The place's corner and the colour, each jittered a little."""
    half = size // 2
    radius = rng.uniform(0.28, 0.42) * half
    column, row = PLACES[place]
    x = column * half + half / 2 + rng.uniform(-0.1, 0.1) * half
    y = row * half + half / 2 + rng.uniform(-0.1, 0.1) * half
    fill = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in COLOURS[colour])
    return Sprite(x, y, radius, fill)


def paint(shape: str, size: int, where: Sprite) -> Image.Image:
    image = Image.new("RGB", (size, size), (255, 255, 255))
    pen = ImageDraw.Draw(image)
    x, y, radius, fill = where.x, where.y, where.radius, where.fill
    box = (x - radius, y - radius, x + radius, y + radius)
    if shape == "circle":
        pen.ellipse(box, fill=fill)
    elif shape == "square":
        pen.rectangle(box, fill=fill)
    elif shape == "triangle":
        pen.polygon([(x, y - radius), (x - radius, y + radius), (x + radius, y + radius)], fill=fill)
    else:
        bar = radius / 3
        pen.rectangle((x - radius, y - bar, x + radius, y + bar), fill=fill)
        pen.rectangle((x - bar, y - radius, x + bar, y + radius), fill=fill)
    return image


def draw(colour: str, shape: str, place: str, size: int, rng: random.Random) -> Image.Image:
    return paint(shape, size, sprite(colour, place, size, rng))


def clip(colour: str, shape: str, place: str, size: int, rng: random.Random) -> list[np.ndarray]:
    """VIDEO_FRAMES frames of the drawn shape drifting in a straight line, a tenth of the image at most."""
    start = sprite(colour, place, size, rng)
    dx, dy = (rng.uniform(-0.1, 0.1) * size / VIDEO_FRAMES for _ in range(2))
    return [
        np.asarray(paint(shape, size, replace(start, x=start.x + t * dx, y=start.y + t * dy)))
        for t in range(VIDEO_FRAMES)
    ]


def sound(colour: str, shape: str, place: str, rng: np.random.Generator) -> np.ndarray:
    """CLIP_SECONDS at SAMPLING_RATE: 1 to 4 beeps (by place) of the colour's pitch in the shape's
    waveform, pitch, loudness and timing jittered, over faint noise."""
    length = round(SAMPLING_RATE * CLIP_SECONDS)
    slot = length // 8  # beeps fill every other eighth
    frequency = PITCHES[colour] * rng.uniform(0.97, 1.03)
    phase = (frequency * np.arange(length) / SAMPLING_RATE + rng.uniform()) % 1.0
    tone = rng.uniform(0.5, 0.8) * WAVEFORMS[shape](phase)
    gate = np.zeros(length)
    start = int(rng.integers(slot))
    for beep in range(list(PLACES).index(place) + 1):
        gate[start + 2 * beep * slot : start + (2 * beep + 1) * slot] = 1.0
    return (tone * gate + rng.normal(0.0, 0.01, length)).astype(np.float32)


def write_video(path: str | Path, frames: list[np.ndarray], fps: int = VIDEO_FPS) -> None:
    """HxWx3 uint8 frames (even H and W) -> an MPEG-4 part 2 mp4 that decord and PyAV both read;
    quantiser 2 keeps the colours close."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"qscale": "2"}
        stream.thread_count = 1  # frames this small encode fastest without threads
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())  # flush


def write_shapes_dataset(root: str | Path, train_per_combo: int = 6, size: int = 32, seed: int = 0) -> Path:
    """Write images/, audio/, video/ and manifest.jsonl under `root` (deterministic for a seed);
    returns the manifest."""
    if size % 2:
        raise ValueError(f"size must be even (got {size}): the videos are yuv420p, which needs even sides")
    root = Path(root)
    for folder in ("images", "audio", "video"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    # One random stream per medium, so the images are the ones this set had before it had sounds.
    image_rng, video_rng, sound_rng = random.Random(seed), random.Random(f"video-{seed}"), np.random.default_rng(seed)
    per_split = {"train": train_per_combo, "val": 1, "test": 1}
    lines = []
    for colour in COLOURS:
        for shape in SHAPES:
            for place in PLACES:
                slug = f"{colour}-{shape}-{place.replace(' ', '-')}"
                for split, count in per_split.items():
                    for variant in range(count):
                        record_id = f"{slug}-{split}{variant}"
                        files = {"image": f"images/{record_id}.png", "audio": f"audio/{record_id}.wav",
                                 "video": f"video/{record_id}.mp4"}
                        draw(colour, shape, place, size, image_rng).save(root / files["image"])
                        soundfile.write(root / files["audio"], sound(colour, shape, place, sound_rng), SAMPLING_RATE)
                        write_video(root / files["video"], clip(colour, shape, place, size, video_rng))
                        lines.append({"id": record_id, "split": split, **files,
                                      "text": captions(colour, shape, place), "label": f"{colour} {shape}"})
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest
