"""The corpus builder on tiny npm packages in their real layouts (OpenMoji's, Iconify JSON sets,
emojibase-data's shortcodes): which icons become which concepts, splits by concept, the held-out
style kept out of training, OpenMoji's part unchanged, and builds that are idempotent and survive a
drawing the rasteriser cannot draw."""

import json
import logging
import re
import tarfile
from pathlib import Path

import pytest
from PIL import Image
from test_openmoji import CLIPS, FRAMES, SIZE, make_package

from datamodules import read_manifest
from datamodules.corpus import EMOJIBASE, SHORTCODE_SETS, EmojiConcepts, build_corpus
from datamodules.iconify import icon_concept, load_icon_set
from datamodules.npm import archive_name
from datamodules.openmoji import OPENMOJI_VERSION, Emoji, build_openmoji, split_of
from stages.cli import data_command

BOX = '<rect x="2" y="2" width="{}" height="12" fill="{}"/>'
EMOJI_SETS = {  # style -> (chars.json or None, icon names)
    "twemoji": ({"1f600": "grinning-face", "2764-fe0f": "red-heart", "1f436": "dog-face",
                 "1f44b-1f3fb": "waving-hand-light-skin-tone"}, ["grinning-face", "red-heart", "dog-face",
                                                                  "waving-hand-light-skin-tone", "no-code-points"]),
    "fluent-emoji-flat": ({"1f34e": "red-apple", "1f697": "automobile"}, ["red-apple", "automobile"]),
    "fluent-emoji": (None, ["red-apple", "automobile", "unknown-thing"]),  # named like fluent-emoji-flat
    "fxemoji": (None, ["redapple", "dog", "lightbulb-2", "not-an-emoji"]),  # compact names and a shortcode
}
HELD_OUT = {"fluent-emoji-high-contrast": ({"1f600": "grinning-face", "1f436": "dog-face", "1f34e": "red-apple",
                                            "1f697": "automobile", "26bd": "soccer-ball", "1f4a1": "light-bulb",
                                            "2764": "red-heart", "1f3c1": "chequered-flag", "1f44b": "waving-hand"},
                                           None)}
ICON_SETS = {
    "tabler": ["home", "home-filled", "home-2", "arrow-left", "broken"],
    "mdi": ["home-outline", "account", "arrow-left-bold"],
}
CATEGORIES = {"mdi": {"House": ["home-outline"], "People": ["account"]}}
SHORTCODES = {"1F436": ["dog"], "1F4A1": "bulb"}


def _iconify(folder: Path, prefix: str, names: list[str], chars: dict[str, str] | None) -> tuple[str, str]:
    """An @iconify-json/<prefix> package archive in `folder`, as `npm pack` writes it."""
    package = folder / prefix / "package"
    package.mkdir(parents=True)
    icons = {name: {"body": '<path d="M0 0' if name == "broken" else BOX.format(2 + len(name) % 10, "#c33")}
             for name in names}
    (package / "icons.json").write_text(json.dumps({"prefix": prefix, "icons": icons, "width": 16, "height": 16}))
    (package / "info.json").write_text(json.dumps({"name": prefix, "license": {"spdx": "MIT"}}))
    name, version = f"@iconify-json/{prefix}", "1.0.0"
    (package / "package.json").write_text(json.dumps({"name": name, "version": version}))
    if chars is not None:
        (package / "chars.json").write_text(json.dumps(chars))
    if prefix in CATEGORIES:
        (package / "metadata.json").write_text(json.dumps({"categories": CATEGORIES[prefix]}))
    _pack(package, folder / archive_name(name, version))
    return name, version


def _pack(package: Path, archive: Path) -> None:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(package, arcname="package")


def _emojibase(folder: Path) -> None:
    package = folder / "emojibase" / "package"
    (package / "en" / "shortcodes").mkdir(parents=True)
    for name in SHORTCODE_SETS:
        (package / "en" / "shortcodes" / f"{name}.json").write_text(json.dumps(SHORTCODES if name == "github" else {}))
    _pack(package, folder / archive_name(*EMOJIBASE))


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The downloads folder every build copies, and the sets' tables to pass to build_corpus."""
    folder = tmp_path_factory.mktemp("downloads")
    openmoji = make_package(tmp_path_factory.mktemp("openmoji"))
    _pack(openmoji, folder / archive_name("openmoji", OPENMOJI_VERSION))
    _emojibase(folder)
    styles = {style: _iconify(folder, style, names, chars) for style, (chars, names) in EMOJI_SETS.items()}
    held = {style: _iconify(folder, style, [*chars.values()], chars) for style, (chars, _) in HELD_OUT.items()}
    icons = {prefix: _iconify(folder, prefix, names, None) for prefix, names in ICON_SETS.items()}
    return folder, {"emoji_styles": styles, "held_out": held, "icon_sets": icons}, openmoji


def build(sources, root: Path, **overrides) -> Path:
    folder, sets, _ = sources
    (root / "downloads").mkdir(parents=True, exist_ok=True)
    for archive in folder.glob("*.tgz"):
        target = root / "downloads" / archive.name
        if not target.exists():
            target.write_bytes(archive.read_bytes())
    return build_corpus(root, size=SIZE, frames=FRAMES, video_per_split=CLIPS, **{**sets, **overrides})


@pytest.fixture(scope="module")
def built(sources, tmp_path_factory):
    manifest = build(sources, tmp_path_factory.mktemp("corpus"))
    return manifest, read_manifest(manifest)


def _by_style(records, style):
    return {r.fields["concept"]: r for r in records if r.fields["style"] == style}


def test_openmoji_part_is_exactly_the_openmoji_build_plus_style_concept_and_source(built, sources, tmp_path):
    manifest, records = built
    alone = read_manifest(build_openmoji(tmp_path, sources[2], size=SIZE, frames=FRAMES, video_per_split=CLIPS))
    ours = [r for r in records if r.fields["style"] == "openmoji"]
    assert [(r.id, r.split) for r in ours] == [(r.id, r.split) for r in alone]
    for mine, theirs in zip(ours, alone):
        assert {k: v for k, v in mine.fields.items() if k not in ("style", "concept", "source")} == theirs.fields
        assert mine.fields["concept"] == mine.id.split("/")[0] and mine.fields["source"] == f"openmoji@{OPENMOJI_VERSION}"
    assert (manifest.parent / "av_events.jsonl").is_file()


def test_emoji_styles_are_matched_by_code_points_a_siblings_names_compact_names_and_shortcodes(built):
    _, records = built
    twemoji = _by_style(records, "twemoji")
    # red-heart's chars keep FE0F and the skin-tone variant is no concept; a name without code points is left out
    assert set(twemoji) == {"1F600", "2764", "1F436"}
    assert set(_by_style(records, "fluent-emoji")) == {"1F34E", "1F697"}  # through fluent-emoji-flat's chars
    assert set(_by_style(records, "fxemoji")) == {"1F34E", "1F436", "1F4A1"}  # redapple, shortcodes dog, bulb
    grinning = twemoji["1F600"]
    assert grinning.fields["text"][0] == "grinning face" and grinning.fields["label"] == "smileys and emotion"
    assert grinning.id == "twemoji/1F600" and grinning.fields["source"] == "@iconify-json/twemoji@1.0.0"
    with Image.open(grinning.path("image")) as image:
        assert image.size == (SIZE, SIZE)


def test_flags_are_found_under_emojiones_older_names():
    concepts = EmojiConcepts([Emoji("1F1EA-1F1EA", "flag: estonia", "flags", ())], {})
    assert concepts._by_name("flag-for-estonia") == "1F1EA-1F1EA"


def test_a_concept_has_one_split_in_every_style_and_the_held_out_style_is_test_only(built):
    _, records = built
    splits = {}
    for record in records:
        splits.setdefault(record.fields["concept"], set()).add(record.split)
    assert all(len(found) == 1 for found in splits.values())
    held = _by_style(records, "fluent-emoji-high-contrast")
    tests = {h.upper() for h in HELD_OUT["fluent-emoji-high-contrast"][0] if split_of(0, h.upper()) == "test"}
    assert tests and set(held) == tests
    assert all(r.split == "test" for r in held.values())


def test_icon_variants_are_one_concept_captioned_in_words_with_the_sets_category(built):
    _, records = built
    tabler, mdi = _by_style(records, "tabler"), _by_style(records, "mdi")
    assert set(tabler) == {"icon:home", "icon:arrow-left"}  # home-filled, home-2: the same; broken: not drawable
    assert tabler["icon:home"].id == "tabler/home"
    assert set(mdi) == {"icon:home", "icon:account", "icon:arrow-left-bold"}
    assert mdi["icon:home"].fields["text"] == ["home", "an icon of home", "home icon: house"]
    assert mdi["icon:arrow-left-bold"].fields["text"] == ["arrow left bold", "an icon of arrow left bold"]
    assert "label" not in mdi["icon:home"].fields and "audio" not in mdi["icon:home"].fields
    assert icon_concept("home-outline-rounded") == "home" and icon_concept("abstract-001") == "abstract"


def test_an_icon_the_rasteriser_cannot_draw_is_left_out_and_named(sources, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        records = read_manifest(build(sources, tmp_path))
    assert not any(r.id == "tabler/broken" for r in records)
    assert any("tabler icon 'broken'" in message for message in caplog.messages)


def test_a_second_build_rewrites_nothing_and_icons_per_set_limits_each_set(built, sources, tmp_path):
    manifest, _ = built
    root = manifest.parent
    stamps = {path: path.stat().st_mtime_ns for path in root.rglob("*") if path.is_file()}
    assert build(sources, root) == manifest
    assert {path: path.stat().st_mtime_ns for path in root.rglob("*") if path.is_file()} == stamps
    limited = read_manifest(build(sources, tmp_path, icons_per_set=2))  # of mdi's 3 and tabler's 3 concepts
    assert len(_by_style(limited, "mdi")) == 2 and len(_by_style(limited, "tabler")) <= 2


def test_the_sets_package_license_and_counts_are_summarised(built):
    manifest, records = built
    summary = json.loads((manifest.parent / "corpus.json").read_text())
    assert summary["twemoji"]["license"] == "MIT" and summary["twemoji"]["concepts"] == 3
    assert summary["openmoji"]["audio"] == sum("audio" in r.fields for r in records)
    assert load_icon_set(manifest.parent / "downloads" / "iconify-json-mdi-1.0.0" / "package").license == "MIT"


def test_the_cli_names_the_manifest_and_prints_the_table(monkeypatch, capsys, tmp_path):
    calls = {}

    def fake(root, **options):
        calls.update(options)
        (Path(root) / "corpus.json").write_text(json.dumps({}))
        return Path(root) / "manifest.jsonl"

    monkeypatch.setattr("datamodules.corpus.build_corpus", fake)
    data_command(["corpus", str(tmp_path), "--icons_per_set", "all", "--size", "96"])
    assert re.fullmatch(rf"wrote {re.escape(str(tmp_path / 'manifest.jsonl'))} in \d+s",
                        capsys.readouterr().out.splitlines()[0])
    assert calls["icons_per_set"] is None and calls["size"] == 96
