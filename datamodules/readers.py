"""Decoding media files into what the encoders' processors take."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from PIL import Image, UnidentifiedImageError


class MediaError(ValueError):
    """A media file could not be decoded."""


def read_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise MediaError(f"cannot decode image {path}: {error}") from None


READERS: dict[str, Callable[[Path], Any]] = {"image": read_image}
