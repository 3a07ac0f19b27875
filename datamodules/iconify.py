"""Iconify JSON icon sets (the `@iconify-json/*` npm packages): each icon's SVG body and name, the
set's license, and, where the set has them, its emoji code points (chars.json) and categories
(metadata.json). Format: https://iconify.design/docs/types/iconify-json.html. Only `icons` are read:
`aliases` are other names or flips of the same drawings, and hidden icons are kept for old names only."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Style variants of one drawing (Material's rounded/sharp, Tabler's filled, Health Icons' 24px...) and
# numbered alternatives ("abstract-001", "a-b-2"): an icon's concept is its name without them.
VARIANTS = re.compile(r"(-(outline|outlined|rounded|sharp|filled|fill|solid|negative|24px))+$")
NUMBERED = re.compile(r"-\d+$")


class IconSetError(ValueError):
    """A package folder that is not an Iconify JSON set (or a damaged one)."""


@dataclass(frozen=True)
class IconSet:
    prefix: str
    package: str  # "@iconify-json/twemoji@1.2.5"
    license: str  # SPDX identifier
    icons: dict[str, dict[str, Any]]  # name -> {body, width?, height?, left?, top?}, hidden ones left out
    width: int
    height: int
    chars: dict[str, str]  # emoji code point sequence (lowercase hex, '-'-joined) -> icon name
    categories: dict[str, str]  # icon name -> its first category

    def svg(self, name: str) -> str:
        """A standalone SVG document of the icon; `currentColor` (monochrome sets) draws black."""
        icon = self.icons[name]
        box = [icon.get("left", 0), icon.get("top", 0), icon.get("width", self.width), icon.get("height", self.height)]
        return ('<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink"'
                f' viewBox="{" ".join(map(str, box))}" color="black">{icon["body"]}</svg>')


def load_icon_set(package: Path) -> IconSet:
    """The set in an extracted `@iconify-json/<prefix>` package folder."""
    package = Path(package)
    try:
        icons = _read(package / "icons.json")
        info = _read(package / "package.json")
        meta = _read(package / "info.json")
    except FileNotFoundError as missing:
        raise IconSetError(f"{missing.filename} not found: {package} is not an extracted @iconify-json package") from None
    chars = _read(package / "chars.json") if (package / "chars.json").is_file() else {}
    metadata = _read(package / "metadata.json") if (package / "metadata.json").is_file() else {}
    categories: dict[str, str] = {}
    for category, names in sorted((metadata.get("categories") or {}).items()):
        for name in names:
            categories.setdefault(name, category)
    kept = {name: icon for name, icon in icons["icons"].items() if not icon.get("hidden")}
    return IconSet(icons["prefix"], f"{info['name']}@{info['version']}", meta.get("license", {}).get("spdx", "unknown"),
                   kept, icons.get("width", 16), icons.get("height", 16), chars, categories)


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise IconSetError(f"{path}: not valid JSON ({error}); extract the package again") from None


def icon_concept(name: str) -> str:
    """'home-outline-rounded' -> 'home', 'abstract-001' -> 'abstract': the drawn thing, shared by sets."""
    return NUMBERED.sub("", VARIANTS.sub("", name)) or name


def words(name: str) -> str:
    """'arrow-left-bold' -> 'arrow left bold': a name a text encoder and a voice can read."""
    return name.replace("-", " ").replace("_", " ")
