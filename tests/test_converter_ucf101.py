"""UCF-101: split 1 from ucfTrainTestlist/ over UCF-101/<Class>/*.avi, val carved from train by whole
groups, video-only records; the shared-classes variant for CMG's UCF-101 <-> VGGSound task."""

from pathlib import Path

import numpy as np
import pytest

from datamodules.converters import ConversionError, converter
from datamodules.converters.shared_classes import PAIRS, UCF_FILE, VGGSOUND_FILE
from datamodules.converters.ucf101 import VAL_GROUPS, words
from datamodules.manifest import read_manifest
from datamodules.shapes import write_video

convert, convert_shared = converter("ucf101"), converter("ucf101-shared")
CLASSES = ["ApplyEyeMakeup", "PlayingGuitar", "YoYo"]
# class -> (train groups, test groups); two clips per group. YoYo has too few train groups to carve val.
GROUPS = {"ApplyEyeMakeup": ([8, 9, 10, 11], [1, 2]), "PlayingGuitar": ([8, 9, 12], [3]), "YoYo": ([9, 10], [1])}


def clip(name: str, group: int, number: int) -> str:
    return f"{name}/v_{name}_g{group:02d}_c{number:02d}.avi"


def write_ucf(root: Path, missing: tuple[str, ...] = ()) -> Path:
    """The two archives extracted into `root`: UCF-101/<Class>/*.avi and ucfTrainTestlist/ (split 1)."""
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text("".join(f"{n} {name}\r\n" for n, name in enumerate(CLASSES, start=1)))
    train = [(clip(name, g, c), n) for n, name in enumerate(CLASSES, start=1) for g in GROUPS[name][0] for c in (1, 2)]
    test = [clip(name, g, c) for name in CLASSES for g in GROUPS[name][1] for c in (1, 2)]
    (lists / "trainlist01.txt").write_text("".join(f"{path} {n}\r\n" for path, n in train))
    (lists / "testlist01.txt").write_text("".join(f"{path}\r\n" for path in test))
    frames = [np.zeros((16, 16, 3), dtype=np.uint8)] * 2
    for path in [path for path, _ in train] + test:
        if path not in missing:
            (root / "UCF-101" / path).parent.mkdir(parents=True, exist_ok=True)
            write_video(root / "UCF-101" / path, frames, fps=2)
    return root


def test_split_one_with_val_carved_by_whole_groups(tmp_path):
    root = write_ucf(tmp_path / "ucf")
    out = tmp_path / "manifests" / "ucf101.jsonl"

    conversion = convert(root, out)

    records = read_manifest(out)
    splits = {(r.fields["class"], r.fields["group"]): r.split for r in records}
    assert splits == {
        ("ApplyEyeMakeup", 8): "train", ("ApplyEyeMakeup", 9): "train", ("ApplyEyeMakeup", 10): "val",
        ("ApplyEyeMakeup", 11): "val", ("ApplyEyeMakeup", 1): "test", ("ApplyEyeMakeup", 2): "test",
        ("PlayingGuitar", 8): "train", ("PlayingGuitar", 9): "val", ("PlayingGuitar", 12): "val",
        ("PlayingGuitar", 3): "test", ("YoYo", 9): "train", ("YoYo", 10): "train", ("YoYo", 1): "test",
    }  # each group whole on one side; VAL_GROUPS highest train groups when a class has more
    assert VAL_GROUPS == 2
    assert [r.split for r in records] == sorted((r.split for r in records), key=["train", "val", "test"].index)
    first = records[0]
    assert first.id == "ucf101/v_ApplyEyeMakeup_g08_c01"
    assert (first.fields["label"], first.fields["text"]) == ("apply eye makeup", "a video of apply eye makeup")
    assert first.path("video").resolve() == (root / "UCF-101" / clip("ApplyEyeMakeup", 8, 1)).resolve()
    assert not any(field in r.fields for r in records for field in ("audio", "image"))  # video only
    assert conversion.written == {"train": 10, "val": 8, "test": 8}
    assert not conversion.skipped


def test_class_names_read_as_words():
    assert [words(name) for name in ("ApplyEyeMakeup", "YoYo", "TaiChi", "PlayingDaf", "Skijet")] == [
        "apply eye makeup", "yo yo", "tai chi", "playing daf", "skijet"]


def test_a_missing_clip_is_skipped(tmp_path):
    root = write_ucf(tmp_path / "ucf", missing=(clip("YoYo", 1, 2), clip("YoYo", 9, 1)))
    conversion = convert(root, tmp_path / "ucf101.jsonl")
    assert conversion.skipped == {"video file missing": 2}
    assert conversion.written == {"train": 9, "val": 8, "test": 7}


def test_the_shared_variant_keeps_the_shared_classes_under_vggsound_names(tmp_path):
    root = write_ucf(tmp_path / "ucf")
    others = [ucf for ucf, _ in PAIRS if ucf not in CLASSES]  # in the real classInd.txt, with no clip here
    with (root / "ucfTrainTestlist" / "classInd.txt").open("a") as lines:
        lines.writelines(f"{n} {name}\n" for n, name in enumerate(others, start=len(CLASSES) + 1))
    out = tmp_path / "ucf101_shared.jsonl"
    conversion = convert_shared(root, out)
    assert {(r.fields["class"], r.fields["label"], r.fields["text"]) for r in read_manifest(out)} == {
        ("PlayingGuitar", "playing acoustic guitar", "a video of playing acoustic guitar")}
    assert conversion.written == {"train": 2, "val": 4, "test": 2}
    assert len(PAIRS) == 10 and len({ucf for ucf, _ in PAIRS}) == len({vgg for _, vgg in PAIRS}) == 10


def test_the_authors_class_files_replace_the_built_in_pairs(tmp_path):
    root = write_ucf(tmp_path / "ucf")
    (root / UCF_FILE).write_text("YoYo\nPlayingGuitar\n")
    with pytest.raises(ConversionError, match=rf"found .*{UCF_FILE} but not .*{VGGSOUND_FILE}"):
        convert_shared(root, tmp_path / "shared.jsonl")
    (root / VGGSOUND_FILE).write_text("playing yoyo\n")
    with pytest.raises(ConversionError, match="names 2 classes .* 1"):
        convert_shared(root, tmp_path / "shared.jsonl")
    (root / VGGSOUND_FILE).write_text("playing yoyo\nplaying electric guitar\n")
    convert_shared(root, tmp_path / "shared.jsonl")
    assert {(r.fields["class"], r.fields["label"]) for r in read_manifest(tmp_path / "shared.jsonl")} == {
        ("YoYo", "playing yoyo"), ("PlayingGuitar", "playing electric guitar")}
    (root / UCF_FILE).write_text("Yoyo\nPlayingGuitar\n")
    with pytest.raises(ConversionError, match=r"shared classes Yoyo are not in .*classInd\.txt"):
        convert_shared(root, tmp_path / "shared.jsonl")


@pytest.mark.parametrize(("file", "line", "message"), [
    ("trainlist01.txt", "Bowling/v_Bowling_g08_c01.avi 4", r"trainlist01\.txt:19: class 'Bowling' is not in classInd"),
    ("testlist01.txt", "YoYo/v_YoYo.avi", r"testlist01\.txt:9: expected `<Class>/v_<Class>_gXX_cYY\.avi`"),
    ("classInd.txt", "YoYo", r"classInd\.txt:4: expected `<index> <Class>`"),
])
def test_a_malformed_list_line_names_the_file_and_line(tmp_path, file, line, message):
    root = write_ucf(tmp_path / "ucf")
    with (root / "ucfTrainTestlist" / file).open("a") as lines:
        lines.write(line + "\n")
    with pytest.raises(ConversionError, match=message):
        convert(root, tmp_path / "ucf101.jsonl")


def test_missing_lists_or_clips_folder_are_named(tmp_path):
    with pytest.raises(ConversionError, match=r"expected UCF-101's split lists ucfTrainTestlist/ .*at .*empty"):
        (tmp_path / "empty").mkdir()
        convert(tmp_path / "empty", tmp_path / "ucf101.jsonl")
    root = write_ucf(tmp_path / "ucf")
    (root / "UCF-101").rename(root / "videos")
    with pytest.raises(ConversionError, match=r"expected UCF-101's clips folder UCF-101/ \(from UCF101\.rar\)"):
        convert(root, tmp_path / "ucf101.jsonl")
    (root / "UCF-101").mkdir()
    with pytest.raises(ConversionError, match=r"no record .*26 video file missing"):
        convert(root, tmp_path / "ucf101.jsonl")
