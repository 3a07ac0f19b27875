"""The OpenMoji builder on a tiny package in the real on-disk layout: which emoji become records,
splits by emoji, files the project's readers decode, motions that show and match their captions,
and builds that are reproducible, resumable and refuse to mix settings."""

import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image, ImageDraw

from datamodules import AudioReader, ImageReader, VideoReader, read_manifest
from datamodules.openmoji import (
    MOTIONS,
    OPENMOJI_VERSION,
    OpenMojiError,
    build_openmoji,
    choose_motion,
    fetch_openmoji,
    render,
    split_of,
)
from stages.cli import data_command

SIZE, FRAMES = 64, 8
CLIPS = {"train": 3, "val": 2, "test": 2}
SVG = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 72 72">{}</svg>'
KEPT = {  # hexcode -> (group, annotation, tags, drawing)
    "1F600": ("smileys-emotion", "grinning face", "face, grin, happy, smile",
              '<circle cx="36" cy="36" r="24" fill="#FCEA2B"/><circle cx="28" cy="30" r="4"/>'),
    "1F436": ("animals-nature", "dog face", "dog, face, pet",
              '<rect x="14" y="18" width="44" height="36" fill="#A57939"/>'),
    "1F34E": ("food-drink", "red apple", "", '<circle cx="36" cy="40" r="20" fill="#D22F27"/>'),
    "1F697": ("travel-places", "automobile", "car", '<rect x="10" y="30" width="52" height="20" fill="#1E50A0"/>'),
    "26BD": ("activities", "soccer ball", "ball, football, soccer",
             '<polygon points="36,10 62,60 10,60" fill="#3F3F3F"/>'),
    "1F4A1": ("objects", "light bulb", "bulb, comic, idea",
              '<ellipse cx="36" cy="30" rx="16" ry="20" fill="#F1B31C"/>'),
    "2764": ("symbols", "red heart", "heart",
             '<path d="M36 60 L12 32 A12 12 0 0 1 36 22 A12 12 0 0 1 60 32 Z" fill="#EA5A47"/>'),
    "1F3C1": ("flags", "chequered flag", "checkered, finish, race",
              '<rect x="16" y="12" width="40" height="26" fill="#000"/>'),
    "1F44B": ("people-body", "waving hand", "hand, wave, waving",
              '<rect x="24" y="10" width="24" height="52" fill="#FADCBC"/>'),
}
FILTERED = {  # hexcode -> (group, annotation, skintone)
    "1F44B-1F3FB": ("people-body", "waving hand: light skin tone", 1),
    "1F3FB": ("component", "light skin tone", ""),
    "E000": ("extras-openmoji", "openmoji", ""),
    "1F9FF": ("objects", "", ""),
}


def _entry(hexcode, group, annotation, tags="", skintone=""):
    return {"emoji": "?", "hexcode": hexcode, "group": group, "subgroups": "x", "annotation": annotation,
            "tags": tags, "openmoji_tags": "", "skintone": skintone, "skintone_base_hexcode": ""}


def make_package(folder: Path) -> Path:
    package = folder / "package"
    (package / "data").mkdir(parents=True)
    (package / "color" / "svg").mkdir(parents=True)
    (package / "package.json").write_text(json.dumps({"name": "openmoji", "version": OPENMOJI_VERSION}))
    entries = [_entry(h, group, name, tags) for h, (group, name, tags, _) in KEPT.items()]
    entries += [_entry(h, group, name, skintone=tone) for h, (group, name, tone) in FILTERED.items()]
    (package / "data" / "openmoji.json").write_text(json.dumps(entries))
    shapes = {h: shape for h, (*_, shape) in KEPT.items()} | dict.fromkeys(FILTERED, '<circle cx="36" cy="36" r="9"/>')
    for hexcode, shape in shapes.items():
        (package / "color" / "svg" / f"{hexcode}.svg").write_text(SVG.format(shape))
    return package


def build(root, package, **overrides):
    settings = {"size": SIZE, "frames": FRAMES, "video_per_split": CLIPS, **overrides}
    return build_openmoji(root, package, **settings)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return make_package(tmp_path_factory.mktemp("openmoji"))


@pytest.fixture(scope="module")
def built(package, tmp_path_factory):
    manifest = build(tmp_path_factory.mktemp("built"), package)
    return manifest, {record.id: record for record in read_manifest(manifest)}


def _files(root: Path) -> dict[str, Path]:
    return {path.relative_to(root).as_posix(): path for path in sorted(root.rglob("*")) if path.is_file()}


def _emoji_and_clips(records):
    emoji = {i: r for i, r in records.items() if "video" not in r.fields}
    return emoji, {i: r for i, r in records.items() if "video" in r.fields}


def test_only_base_emoji_with_names_outside_components_and_extras_are_kept(built):
    manifest, records = built
    emoji, clips = _emoji_and_clips(records)
    assert set(emoji) == set(KEPT)
    for folder in ("images", "audio"):
        assert {path.stem for path in (manifest.parent / folder).iterdir()} == set(KEPT)
    assert emoji["1F34E"].captions() == ["red apple", "an emoji of red apple"]  # no tags: no tag caption
    assert emoji["1F600"].captions()[2] == "grinning face emoji: grin, happy, smile"  # 'face' is in the name
    assert {r.fields["label"] for r in emoji.values()} >= {"smileys and emotion", "food and drink", "flags"}
    for record in clips.values():
        hexcode, motion = record.id.split("/")
        assert motion.replace("_", " ") in MOTIONS and hexcode in emoji
        assert record.fields["label"] == emoji[hexcode].fields["label"]
        assert all(MOTIONS[motion.replace("_", " ")] in caption for caption in record.captions())


def test_splits_are_by_emoji_about_70_10_20_and_clips_follow_their_emoji(built):
    _, records = built
    emoji, clips = _emoji_and_clips(records)
    assert clips and all(r.split == emoji[r.id.split("/")[0]].split for r in clips.values())
    per_split = Counter(emoji[r.id.split("/")[0]].split for r in clips.values())
    available = Counter(r.split for r in emoji.values())
    assert per_split == {split: min(CLIPS[split], available[split]) for split in available if available[split]}
    shares = Counter(split_of(0, f"{n:05X}") for n in range(20000))
    assert shares["train"] / 20000 == pytest.approx(0.7, abs=0.02)
    assert shares["val"] / 20000 == pytest.approx(0.1, abs=0.02)
    assert split_of(0, "1F600") == split_of(0, "1F600")


def test_every_file_decodes_with_the_project_readers(built):
    _, records = built
    for record in records.values():
        if "image" in record.fields:
            image = ImageReader()(record.path("image"))
            assert image.size == (SIZE, SIZE) and image.getpixel((0, 0)) == (255, 255, 255)
            info = soundfile.info(record.path("audio"))
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            speech = AudioReader(16000, None)(record.path("audio"))
            assert len(speech) > 8000 and np.abs(speech).max() > 0.1  # a name takes over half a second
        else:
            frames = VideoReader(FRAMES)(record.path("video"))
            assert len(frames) == FRAMES and frames[0].shape == (SIZE, SIZE, 3)
            change = np.abs(frames[0].astype(float) - frames[-1].astype(float)).mean()
            assert change > 2.0, record.id  # of 255: clearly moved, not codec noise


def _ink(image: Image.Image) -> np.ndarray:
    return np.asarray(image).min(axis=2) < 128


def _centre(image: Image.Image) -> np.ndarray:
    rows, columns = np.nonzero(_ink(image))
    return np.array([columns.mean(), rows.mean()])


@pytest.mark.parametrize("motion", sorted(MOTIONS))
def test_each_motion_moves_the_drawing_the_way_its_caption_says(motion):
    drawing = Image.new("RGB", (SIZE, SIZE), "white")
    ImageDraw.Draw(drawing).rectangle((26, 8, 38, 20), fill="black")  # a mark above the centre
    first, last = render(drawing, motion, 0.0), render(drawing, motion, 1.0)
    step = _centre(last) - _centre(first)
    expected = {"pan left": step[0] < -10, "pan right": step[0] > 10, "pan up": step[1] < -10,
                "pan down": step[1] > 10, "zoom in": _ink(last).sum() > 3 * _ink(first).sum(),
                "zoom out": _ink(first).sum() > 3 * _ink(last).sum(),
                "rotate clockwise": step[0] > 10, "rotate counterclockwise": step[0] < -10}  # the mark swings
    assert expected[motion], (motion, step)


def test_round_drawings_get_a_pan_or_zoom_instead_of_an_invisible_rotation():
    disc, marked = Image.new("RGB", (4 * SIZE, 4 * SIZE), "white"), Image.new("RGB", (SIZE, SIZE), "white")
    ImageDraw.Draw(disc).ellipse((48, 48, 207, 207), fill="red")  # centred, and smoothed like rsvg's
    disc = disc.resize((SIZE, SIZE), Image.Resampling.BOX)
    ImageDraw.Draw(marked).rectangle((26, 8, 38, 20), fill="black")
    hexcodes = [f"{n:04X}" for n in range(40)]
    assert not any(choose_motion(disc, 0, h).startswith("rotate") for h in hexcodes)
    assert any(choose_motion(marked, 0, h).startswith("rotate") for h in hexcodes)


def test_a_second_build_rewrites_nothing_and_another_root_gets_the_same_bytes(built, package, tmp_path):
    manifest, _ = built
    before = {name: (path.stat().st_mtime_ns, path.read_bytes()) for name, path in _files(manifest.parent).items()}
    assert build(manifest.parent, package) == manifest
    after = {name: (path.stat().st_mtime_ns, path.read_bytes()) for name, path in _files(manifest.parent).items()}
    assert after == before
    again = {name: path.read_bytes() for name, path in _files(build(tmp_path / "again", package).parent).items()}
    assert again == {name: data for name, (_, data) in before.items()}


def test_an_interrupted_build_resumes_writing_only_what_is_missing(package, tmp_path):
    root = build(tmp_path, package, limit=3, video_per_split={}).parent
    lost = sorted((root / "audio").iterdir())[0]
    half = lost.rename(lost.with_name(f".{lost.stem}.part.wav"))  # as if killed mid-write
    (root / "manifest.jsonl").unlink()
    kept = {name: path.stat().st_mtime_ns for name, path in _files(root).items()}
    build(root, package, limit=3, video_per_split={})
    assert lost.is_file() and (root / "manifest.jsonl").is_file() and not half.exists()
    assert all(path.stat().st_mtime_ns == kept[name] for name, path in _files(root).items() if name in kept)


def test_other_settings_on_a_built_root_are_refused(built, package):
    manifest, _ = built
    with pytest.raises(OpenMojiError, match="other settings.*use another root"):
        build(manifest.parent, package, size=32)


def test_a_broken_svg_is_named(package, tmp_path):
    broken = make_package(tmp_path / "broken")
    svg = broken / "color" / "svg" / "2764.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg"><circle r="3"')
    with pytest.raises(OpenMojiError, match="emoji 2764") as error:
        build(tmp_path / "out", broken, video_per_split={})
    assert str(svg) in str(error.value)


def test_missing_tools_name_the_debian_packages(package, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(OpenMojiError, match="apt-get install librsvg2-bin espeak-ng"):
        build(tmp_path / "out", package)


def test_fetch_extracts_a_downloaded_archive_once_and_asks_for_npm_if_none(package, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm: the archive already there must do
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with pytest.raises(OpenMojiError, match="install Node.js/npm.*--package"):
        fetch_openmoji(downloads)
    with tarfile.open(downloads / f"openmoji-{OPENMOJI_VERSION}.tgz", "w:gz") as archive:
        archive.add(package, arcname="package")
    extracted = fetch_openmoji(downloads)
    assert (extracted / "data" / "openmoji.json").read_bytes() == (package / "data" / "openmoji.json").read_bytes()
    stamp = extracted.stat().st_mtime_ns
    assert fetch_openmoji(downloads) == extracted and extracted.stat().st_mtime_ns == stamp
    assert not list(downloads.glob(".*"))  # no partial extract left behind


def test_the_cli_prints_the_manifest_and_the_counts_per_split(built, package, capsys):
    manifest, records = built
    data_command(["openmoji", str(manifest.parent), "--package", str(package), "--size", str(SIZE),
                  "--video_train", "3", "--video_val", "2", "--video_test", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"wrote {manifest}"
    emoji, clips = _emoji_and_clips(records)
    for split in ("train", "val", "test"):
        counts = [sum(r.split == split for r in group.values()) for group in (emoji, clips)]
        assert f"{split}: {counts[0]} emoji, {counts[1]} clips" in lines
