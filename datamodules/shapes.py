"""A planted image-text set: coloured shapes in one of four corners, captioned by colour, shape and
place. Every caption is fully determined by its image, so a working model must reach R@1 near 1;
the test split holds one image per (colour, shape, place), so chance R@1 is 1/96."""

from __future__ import annotations

import json
import random
from pathlib import Path

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


def draw(colour: str, shape: str, place: str, size: int, rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (size, size), (255, 255, 255))
    pen = ImageDraw.Draw(image)
    half = size // 2
    radius = rng.uniform(0.28, 0.42) * half
    column, row = PLACES[place]
    cx = column * half + half / 2 + rng.uniform(-0.1, 0.1) * half
    cy = row * half + half / 2 + rng.uniform(-0.1, 0.1) * half
    fill = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in COLOURS[colour])
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if shape == "circle":
        pen.ellipse(box, fill=fill)
    elif shape == "square":
        pen.rectangle(box, fill=fill)
    elif shape == "triangle":
        pen.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)
    else:
        bar = radius / 3
        pen.rectangle((cx - radius, cy - bar, cx + radius, cy + bar), fill=fill)
        pen.rectangle((cx - bar, cy - radius, cx + bar, cy + radius), fill=fill)
    return image


def write_shapes_dataset(root: str | Path, train_per_combo: int = 6, size: int = 32, seed: int = 0) -> Path:
    """Write images/ and manifest.jsonl under `root` (deterministic for a seed); returns the manifest."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    per_split = {"train": train_per_combo, "val": 1, "test": 1}
    lines = []
    for colour in COLOURS:
        for shape in SHAPES:
            for place in PLACES:
                slug = f"{colour}-{shape}-{place.replace(' ', '-')}"
                for split, count in per_split.items():
                    for variant in range(count):
                        record_id = f"{slug}-{split}{variant}"
                        relative = f"images/{record_id}.png"
                        draw(colour, shape, place, size, rng).save(root / relative)
                        lines.append({"id": record_id, "split": split, "image": relative,
                                      "text": captions(colour, shape, place),
                                      "label": f"{colour} {shape}"})
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest
