"""Augmented views of drawings (emoji, icons) for a feature cache of several views per image.

The demo trains on emoji in seven colour styles and on monochrome icons, and is tested on a held-out
black-and-white style, so the views teach what a drawing is whatever its colours, line weight and
framing. Each view is made from an integer seed alone (no global RNG), so rebuilding a cache gives
the same images and the same features.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from oneencoder.readers import ImageReader


@dataclass(frozen=True)
class ImageAugment:
    """How a feature cache augments images: `views` per image, view 0 the plain image, each other
    view one random draw of the transforms below, applied in this order.

    - crop (area share `crop_scale`, aspect `crop_ratio`), resized back to the image's size: framing
      and stroke width change, but at least 60% of the area stays, since a drawing fills its canvas and
      a smaller crop would often cut away what the caption names. No flips: arrows and hands have sides.
    - colour jitter: brightness, contrast, saturation factors in 1 +- the value, hue shifted by up to
      `hue` of a turn. Hue stays small, since colour names ("red heart") are in the captions; brightness
      and contrast stay at 0.2, since they grey the white canvas every style (the held-out one too)
      draws on, which at 0.3 often turns mid-grey. Saturation leaves white and black alone: 0.3.
    - `greyscale` probability: the held-out style and the icons have no colour; 0.3 leaves most views
      coloured, which the colour-named concepts need.
    - `blur` probability, radius up to `blur_radius` pixels of the image: softer or heavier strokes, as
      another style's renderer draws them.
    """

    views: int = 4
    crop_scale: tuple[float, float] = (0.6, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.3
    hue: float = 0.05
    greyscale: float = 0.3
    blur: float = 0.2
    blur_radius: float = 2.0

    def __post_init__(self) -> None:
        if self.views < 2:
            raise ValueError(f"augment.views must be at least 2 (view 0 is the plain image; got {self.views});"
                             " without augmentation leave `augment` out")
        low, high = self.crop_scale
        if not 0 < low <= high <= 1 or not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"augment: crop_scale must be 0 < low <= high <= 1 and crop_ratio 0 < low <= high"
                             f" (got {self.crop_scale}, {self.crop_ratio})")
        if not (0 <= self.greyscale <= 1 and 0 <= self.blur <= 1 and 0 <= self.hue <= 0.5):
            raise ValueError("augment: greyscale and blur are probabilities in [0, 1], hue at most 0.5 of a turn")


@dataclass(frozen=True)
class AugmentedView:
    """One augmented view of an image file, as a cache item to read: its file and its seed."""

    path: Path
    seed: int


def view_seed(key: str) -> int:
    """The seed of the view keyed `key`: fixed by the record and the view, not by the run."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")


def augment_image(image: Image.Image, settings: ImageAugment, seed: int) -> Image.Image:
    """`image` (RGB) cropped, colour-jittered, maybe greyed and blurred, as drawn by `seed`; same size."""
    rng = random.Random(seed)
    width, height = image.size
    area = width * height * rng.uniform(*settings.crop_scale)
    aspect = math.exp(rng.uniform(*(math.log(r) for r in settings.crop_ratio)))
    crop_w = min(width, max(1, round(math.sqrt(area * aspect))))
    crop_h = min(height, max(1, round(math.sqrt(area / aspect))))
    left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
    image = image.resize(image.size, Image.Resampling.BICUBIC, box=(left, top, left + crop_w, top + crop_h))
    for enhance, amount in ((ImageEnhance.Brightness, settings.brightness), (ImageEnhance.Contrast, settings.contrast),
                            (ImageEnhance.Color, settings.saturation)):
        image = enhance(image).enhance(rng.uniform(1 - amount, 1 + amount))
    shift = round(rng.uniform(-settings.hue, settings.hue) * 256)
    if shift:
        hue, saturation, value = image.convert("HSV").split()
        hue = hue.point(lambda h: (h + shift) % 256)
        image = Image.merge("HSV", (hue, saturation, value)).convert("RGB")
    if rng.random() < settings.greyscale:
        image = ImageOps.grayscale(image).convert("RGB")
    if rng.random() < settings.blur:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.1, settings.blur_radius)))
    return image


@dataclass(frozen=True)
class AugmentingReader:
    """Reads a cache's image items: a file as ImageReader does, an AugmentedView as its augmented image."""

    reader: ImageReader
    settings: ImageAugment

    def __call__(self, value: Path | AugmentedView, rng: random.Random | None = None) -> Image.Image:
        if isinstance(value, AugmentedView):
            return augment_image(self.reader(value.path), self.settings, value.seed)
        return self.reader(value, rng)
