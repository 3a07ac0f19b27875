"""The demo's corpus: OpenMoji as before (drawings, spoken names, clips), plus the same emoji drawn
in six more styles and thousands of named monochrome icons, all from npm packages, so that the default
model learns a space that transfers beyond one drawing style.

Every record carries `style` (the set it is drawn in), `concept` (what is drawn: an emoji's code point
sequence, or "icon:" and an icon's name without its variant suffix) and `source` (package@version).
Splits are by concept with OpenMoji's rule, so OpenMoji's records and splits are exactly those of
`oneencoder data openmoji`, and no concept is in two splits: a test emoji is never trained on in any
style. One more emoji style, HELD_OUT, is drawn for the test concepts only, as a style no stage sees.
Captions: an emoji's OpenMoji name and tags (the Unicode CLDR annotations) in every style; an icon's
name in words and its set's category. Speech stays one clip per emoji, on its OpenMoji record.

Like the OpenMoji build: deterministic, idempotent (a second run rewrites nothing), resumable (each
file is written under a temporary name and renamed), one root per settings (build.json)."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .iconify import NUMBERED, IconSet, icon_concept, load_icon_set, words
from .npm import fetch_package, pack_archives
from .openmoji import (
    OPENMOJI_VERSION,
    VIDEO_PER_SPLIT,
    Emoji,
    OpenMojiError,
    captions,
    check_tools,
    claim_root,
    draw_svg,
    fetch_openmoji,
    group_words,
    openmoji_records,
    remove_partials,
    run_all,
    seeded_unit,
    split_of,
    write_av_events,
    write_if_changed,
)

log = logging.getLogger(__name__)

CORPUS_VERSION = 1
# style -> (npm package, version). OpenMoji itself is drawn from its own package, as before.
EMOJI_STYLES: Mapping[str, tuple[str, str]] = {
    "twemoji": ("@iconify-json/twemoji", "1.2.5"),
    "fluent-emoji-flat": ("@iconify-json/fluent-emoji-flat", "1.2.6"),
    "fluent-emoji": ("@iconify-json/fluent-emoji", "1.2.7"),
    "emojione": ("@iconify-json/emojione", "1.2.3"),
    "fxemoji": ("@iconify-json/fxemoji", "1.2.2"),
    "streamline-emojis": ("@iconify-json/streamline-emojis", "1.2.4"),
}
HELD_OUT: Mapping[str, tuple[str, str]] = {
    "fluent-emoji-high-contrast": ("@iconify-json/fluent-emoji-high-contrast", "1.2.6"),
}
ICON_SETS: Mapping[str, tuple[str, str]] = {
    "game-icons": ("@iconify-json/game-icons", "1.2.4"),
    "healthicons": ("@iconify-json/healthicons", "1.2.13"),
    "material-symbols": ("@iconify-json/material-symbols", "1.2.98"),
    "tabler": ("@iconify-json/tabler", "1.2.41"),
    "mdi": ("@iconify-json/mdi", "1.2.3"),
}
# Sets without chars.json whose icons are named exactly as a sibling's, which has it.
NAMED_LIKE = {"fluent-emoji": "fluent-emoji-flat"}
# Other names of each emoji (shortcodes), for the sets that name their icons without code points.
EMOJIBASE = ("emojibase-data", "17.0.0")
SHORTCODE_SETS = ("cldr", "emojibase", "github", "iamcal", "joypixels", "emojibase-legacy")
DEMO_ICONS_PER_SET = 600
DEMO_SIZE = 160  # EfficientNet-Lite0's 5 x 5 grid: 2.5x faster to encode than 224 px, and drawings need no more
FLAG_FOR = re.compile(r"^flag-for-")  # emojione's "flag-for-estonia" is CLDR's "flag: estonia"


class CorpusError(OpenMojiError):
    """The corpus build cannot go on (a package that is not what it should be, a root built otherwise)."""


@dataclass
class Part:
    """One set's records, the drawings they need, and the set's package and license."""

    records: list[dict[str, Any]]
    drawings: list[Drawing]
    source: str
    license: str


@dataclass(frozen=True)
class Drawing:
    """One SVG to draw into one PNG."""

    svg: str
    target: Path
    where: str


def _bare(codepoints: str) -> str:
    """'2764-FE0F-200D-1F525' and '2764-200d-1f525' -> '2764-200D-1F525': variation selectors only
    choose a presentation, and sets differ in whether they keep them."""
    return "-".join(part for part in codepoints.upper().split("-") if part != "FE0F")


def _compact(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


class EmojiConcepts:
    """Which OpenMoji emoji an icon of another emoji set draws: by the set's code points when it has
    them (exact), else by its icon's name against the emoji's names and shortcodes."""

    def __init__(self, emoji: list[Emoji], shortcodes: Mapping[str, list[str]]) -> None:
        self.emoji = {e.hexcode: e for e in emoji}
        self.by_codepoints = {_bare(e.hexcode): e.hexcode for e in emoji}
        self.by_name: dict[str, str] = {}
        for e in emoji:
            self.by_name.setdefault(_compact(e.annotation), e.hexcode)
        for codepoints, codes in shortcodes.items():
            hexcode = self.by_codepoints.get(_bare(codepoints))
            for code in codes if hexcode else ():
                self.by_name.setdefault(_compact(code), hexcode)

    def match(self, icons: IconSet, chars: Mapping[str, str]) -> dict[str, str]:
        """hexcode -> icon name, for the emoji the set draws; the first name (sorted) where several
        draw one emoji. `chars`: the code point table to go by (the set's, or its sibling's)."""
        by_icon = {name: _bare(codepoints) for codepoints, name in chars.items()}
        found: dict[str, str] = {}
        for name in sorted(icons.icons):
            hexcode = self.by_codepoints.get(by_icon.get(name, "")) if chars else self._by_name(name)
            if hexcode is not None:
                found.setdefault(hexcode, name)
        return found

    def _by_name(self, name: str) -> str | None:
        base = NUMBERED.sub("", name)
        for candidate in (base, FLAG_FOR.sub("flag-", base)):
            if _compact(candidate) in self.by_name:
                return self.by_name[_compact(candidate)]
        return None


def read_shortcodes(package: Path) -> dict[str, list[str]]:
    """code points -> every shortcode emojibase-data lists for it."""
    codes: dict[str, list[str]] = {}
    for name in SHORTCODE_SETS:
        table = json.loads((package / "en" / "shortcodes" / f"{name}.json").read_text(encoding="utf-8"))
        for codepoints, value in table.items():
            codes.setdefault(codepoints, []).extend([value] if isinstance(value, str) else value)
    return codes


def icon_captions(concept: str, category: str | None) -> list[str]:
    """An icon's concept in words, as an icon, and with its set's category when it has one."""
    name = words(concept)
    lines = [name, f"an icon of {name}"]
    if category:
        lines.append(f"{name} icon: {category.lower()}")
    return lines


def _fetch(root: Path, package: tuple[str, str]) -> Path:
    return fetch_package(root / "downloads", *package, CorpusError)


def _emoji_style(root: Path, style: str, packages: Mapping[str, tuple[str, str]], concepts: EmojiConcepts,
                 seed: int, splits: tuple[str, ...]) -> Part:
    icons = load_icon_set(_fetch(root, packages[style]))
    chars = icons.chars
    if style in NAMED_LIKE:
        chars = load_icon_set(_fetch(root, packages[NAMED_LIKE[style]])).chars
    records, drawings = [], []
    for hexcode, name in sorted(concepts.match(icons, chars).items()):
        split = split_of(seed, hexcode)
        if split not in splits:
            continue
        emoji, image = concepts.emoji[hexcode], root / "images" / style / f"{hexcode}.png"
        drawings.append(Drawing(icons.svg(name), image, f"{style} icon {name!r}"))
        records.append({"id": f"{style}/{hexcode}", "split": split, "text": captions(emoji),
                        "image": image.relative_to(root).as_posix(), "label": group_words(emoji.group),
                        "style": style, "concept": hexcode, "source": icons.package})
    log.info("%s: %d emoji of %d icons (%s)", style, len(records), len(icons.icons), ", ".join(splits))
    return Part(records, drawings, icons.package, icons.license)


def _icon_set(root: Path, prefix: str, package: tuple[str, str], seed: int, per_set: int | None) -> Part:
    icons = load_icon_set(_fetch(root, package))
    names: dict[str, str] = {}  # concept -> its plainest icon: the shortest name, then the first
    for name in sorted(icons.icons, key=lambda name: (len(name), name)):
        names.setdefault(icon_concept(name), name)
    # One order for every set, so that the sets' shares overlap: the same concepts in several icon styles.
    ranked = sorted(names, key=lambda concept: seeded_unit(seed, "order icons", concept))[:per_set]
    records, drawings = [], []
    for concept in sorted(ranked):
        name, key = names[concept], f"icon:{concept}"
        image = root / "images" / prefix / f"{name}.png"
        drawings.append(Drawing(icons.svg(name), image, f"{prefix} icon {name!r}"))
        records.append({"id": f"{prefix}/{name}", "split": split_of(seed, key),
                        "text": icon_captions(concept, icons.categories.get(name)),
                        "image": image.relative_to(root).as_posix(), "style": prefix, "concept": key,
                        "source": icons.package})
    log.info("%s: %d icons of %d concepts (%d icons)", prefix, len(records), len(names), len(icons.icons))
    return Part(records, drawings, icons.package, icons.license)


def _openmoji_fields(record: dict[str, Any]) -> dict[str, Any]:
    concept = record["id"].split("/", 1)[0]  # clips are HEXCODE/motion
    return {**record, "style": "openmoji", "concept": concept, "source": f"openmoji@{OPENMOJI_VERSION}"}


def build_corpus(
    root: str | Path,
    *,
    seed: int = 0,
    size: int = 224,
    icons_per_set: int | None = DEMO_ICONS_PER_SET,
    video_per_split: Mapping[str, int] = VIDEO_PER_SPLIT,
    frames: int = 8,
    workers: int = 2,
    emoji_styles: Mapping[str, tuple[str, str]] = EMOJI_STYLES,
    held_out: Mapping[str, tuple[str, str]] = HELD_OUT,
    icon_sets: Mapping[str, tuple[str, str]] = ICON_SETS,
) -> Path:
    """Writes the corpus under `root` (packages fetched into `root`/downloads): images/ (OpenMoji's at
    the top, other sets in a folder each), audio/, video/, build.json, manifest.jsonl, av_events.jsonl (see write_av_events) and
    corpus.json (records per style and split, each source's package and license); returns the manifest.
    `icons_per_set`: how many icon concepts each icon set gives (None: all of them). The sets default to
    the module's tables (style or prefix -> npm package and version)."""
    if icons_per_set is not None and icons_per_set < 0:
        raise ValueError(f"icons_per_set must be >= 0, or None for every icon (got {icons_per_set})")
    check_tools()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    settings = {"corpus": CORPUS_VERSION, "openmoji": OPENMOJI_VERSION, "seed": seed, "size": size, "frames": frames,
                "video_per_split": dict(video_per_split), "icons_per_set": icons_per_set,
                "sources": {style: "@".join(package) for style, package in
                            {**emoji_styles, **held_out, **icon_sets, "emojibase": EMOJIBASE}.items()}}
    claim_root(root, settings)
    remove_partials(root)
    pack_archives(root / "downloads", [("openmoji", OPENMOJI_VERSION), EMOJIBASE, *emoji_styles.values(),
                                       *held_out.values(), *icon_sets.values()], CorpusError)
    package = fetch_openmoji(root / "downloads")
    emoji, openmoji = openmoji_records(root, package, seed=seed, size=size, video_per_split=video_per_split,
                                       frames=frames, limit=None, workers=workers)
    parts = {"openmoji": Part([_openmoji_fields(record) for record in openmoji], [], f"openmoji@{OPENMOJI_VERSION}",
                              json.loads((package / "package.json").read_text(encoding="utf-8")).get("license", "unknown"))}
    concepts = EmojiConcepts(emoji, read_shortcodes(_fetch(root, EMOJIBASE)))
    for style in emoji_styles:
        parts[style] = _emoji_style(root, style, emoji_styles, concepts, seed, ("train", "val", "test"))
    for style in held_out:
        parts[style] = _emoji_style(root, style, held_out, concepts, seed, ("test",))
    for prefix, package_version in icon_sets.items():
        parts[prefix] = _icon_set(root, prefix, package_version, seed, icons_per_set)
    records = [record for part in parts.values() for record in part.records]
    drawings = [drawing for part in parts.values() for drawing in part.drawings]
    for folder in {drawing.target.parent for drawing in drawings}:
        folder.mkdir(parents=True, exist_ok=True)
    outcomes = run_all("drawings", lambda drawing: _draw(drawing, size), drawings, workers)
    failed = {drawing.target for drawing, outcome in zip(drawings, outcomes) if outcome is None}
    log.info("corpus drawings: wrote %d, kept %d already there, could not draw %d (left out)",
             outcomes.count(True), outcomes.count(False), len(failed))
    records = [record for record in records if "image" not in record or root / record["image"] not in failed]
    manifest = root / "manifest.jsonl"
    write_if_changed(manifest, "".join(json.dumps(record) + "\n" for record in records))
    write_av_events(manifest)
    licenses = {style: part.license for style, part in parts.items()}
    write_if_changed(root / "corpus.json", json.dumps(summary(records, licenses), indent=2) + "\n")
    return manifest


def summary_table(path: Path) -> str:
    """corpus.json as a markdown table, for the build's log and the README."""
    styles = json.loads(Path(path).read_text(encoding="utf-8"))
    rows = ["| style | source | license | train | val | test | concepts | spoken | clips |", "|---" * 9 + "|"]
    for style, entry in styles.items():
        counts = [entry["records"].get(split, 0) for split in ("train", "val", "test")]
        rows.append(f"| {style} | {entry['source']} | {entry['license']} | " + " | ".join(map(str, counts))
                    + f" | {entry['concepts']} | {entry['audio']} | {entry['video']} |")
    return "\n".join(rows)


def _draw(drawing: Drawing, size: int) -> bool | None:
    """draw_svg, or None (logged) when the rasteriser cannot draw it: a third-party set may hold a
    drawing too heavy for it, which is left out rather than stopping the build."""
    try:
        return draw_svg(drawing.svg, drawing.target, size, drawing.where)
    except OpenMojiError as error:
        log.warning("left out: %s", error)
        return None


def summary(records: list[dict[str, Any]], licenses: Mapping[str, str]) -> dict[str, Any]:
    """Per style: its source and license, records per split, concepts, and how many records have
    audio or video."""
    styles: dict[str, dict[str, Any]] = {}
    for record in records:
        entry = styles.setdefault(record["style"], {"source": record["source"], "license": licenses[record["style"]],
                                                    "records": Counter(),
                                                    "concepts": set(), "audio": 0, "video": 0})
        entry["records"][record["split"]] += 1
        entry["concepts"].add(record["concept"])
        entry["audio"] += "audio" in record
        entry["video"] += "video" in record
    return {style: {**entry, "records": dict(entry["records"]), "concepts": len(entry["concepts"])}
            for style, entry in styles.items()}

