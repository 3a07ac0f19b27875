"""MSR-VTT converter: both index forms (MSRVTT_data.json; the original release's *_videodatainfo.json),
official splits and the 1k-A (JSFusion) test split, skips, and malformed layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datamodules.converters import ConversionError, converter
from datamodules.converters.msrvtt import convert
from datamodules.manifest import read_manifest

# video_id -> (official split, category); video4 has no mp4, video5 no sentence.
VIDEOS = {
    "video0": ("train", 3), "video1": ("train", 7), "video10": ("train", 0), "video2": ("validate", 9),
    "video3": ("test", 16), "video4": ("test", 2), "video5": ("train", 1), "video6": ("test", 4),
}
# (sen_id, video_id, caption): listed out of sen_id order on purpose.
SENTENCES = [
    (3, "video0", "a man is cooking"), (0, "video0", "someone cooks pasta"),
    (1, "video1", "a cat plays piano"), (2, "video10", "cars race on a track"),
    (4, "video2", "a woman sings"), (5, "video3", "kids play football"), (6, "video3", "a soccer game"),
    (7, "video4", "a dog runs"), (8, "video6", "news anchor talks"),
]
CSV_HEADER = "key,vid_key,video_id,sentence"


def _index(video_ids: list[str]) -> dict:
    """An index in MSR-VTT's own JSON form, holding only `video_ids`."""
    videos = [{"category": VIDEOS[v][1], "url": f"https://www.youtube.com/watch?v={v}", "video_id": v,
               "start time": 1.0, "end time": 11.0, "split": VIDEOS[v][0], "id": int(v[5:])}
              for v in video_ids]
    sentences = [{"caption": caption, "video_id": v, "sen_id": sen_id}
                 for sen_id, v, caption in SENTENCES if v in video_ids]
    return {"info": {"year": "2016"}, "videos": videos, "sentences": sentences}


def _write_videos(folder: Path, video_ids: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for video_id in video_ids:
        if video_id != "video4":  # its mp4 is missing
            (folder / f"{video_id}.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")


def full_form(root: Path) -> Path:
    """MSRVTT_data.json with every video in videos/all/ (the CLIP4Clip distribution)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "MSRVTT_data.json").write_text(json.dumps(_index(list(VIDEOS))))
    _write_videos(root / "videos" / "all", list(VIDEOS))
    return root


def original_form(root: Path, with_test: bool = True) -> Path:
    """train_val_videodatainfo.json + test_videodatainfo.json, videos in TrainValVideo/ and TestVideo/."""
    root.mkdir(parents=True, exist_ok=True)
    train_val = [v for v, (split, _) in VIDEOS.items() if split != "test"]
    test = [v for v, (split, _) in VIDEOS.items() if split == "test"]
    (root / "train_val_videodatainfo.json").write_text(json.dumps(_index(train_val)))
    _write_videos(root / "TrainValVideo", train_val)
    if with_test:
        (root / "test_videodatainfo.json").write_text(json.dumps(_index(test)))
        _write_videos(root / "TestVideo", test)
    return root


def write_csv(root: Path, rows: list[tuple[str, str]], header: str = CSV_HEADER) -> None:
    lines = [header] + [f"ret{i},msr{v[5:]},{v},{sentence}" for i, (v, sentence) in enumerate(rows)]
    (root / "MSRVTT_JSFUSION_test.csv").write_text("\n".join(lines) + "\n")


def run(root: Path, tmp_path: Path) -> tuple[list, object]:
    out = tmp_path / "manifests" / "msrvtt.jsonl"
    conversion = convert(root, out)
    return read_manifest(out), conversion


def summary(records: list) -> list[tuple]:
    return [(r.id, r.split, r.fields["text"], r.fields["category"]) for r in records]


OFFICIAL = [
    ("msrvtt/video0", "train", ["someone cooks pasta", "a man is cooking"], 3),
    ("msrvtt/video1", "train", ["a cat plays piano"], 7),
    ("msrvtt/video10", "train", ["cars race on a track"], 0),
    ("msrvtt/video2", "val", ["a woman sings"], 9),
    ("msrvtt/video3", "test", ["kids play football", "a soccer game"], 16),
    ("msrvtt/video6", "test", ["news anchor talks"], 4),
]


def test_full_index_keeps_official_splits_and_all_captions(tmp_path):
    root = full_form(tmp_path / "msrvtt_data")
    records, conversion = run(root, tmp_path)
    assert summary(records) == OFFICIAL
    for record in records:
        assert record.path("video").resolve() == (root / "videos" / "all" / f"{record.id[7:]}.mp4").resolve()
    assert conversion.written == {"train": 3, "val": 1, "test": 2}
    assert conversion.skipped == {"video file missing": 1, "no caption": 1}
    assert converter("msrvtt").__wrapped__ is convert


def test_original_release_reads_train_val_and_test_index(tmp_path):
    root = original_form(tmp_path / "MSRVTT")
    records, conversion = run(root, tmp_path)
    assert summary(records) == OFFICIAL
    folders = {r.id: r.path("video").resolve().parent for r in records}
    assert folders["msrvtt/video2"] == (root / "TrainValVideo").resolve()
    assert folders["msrvtt/video3"] == (root / "TestVideo").resolve()
    assert conversion.skipped == {"video file missing": 1, "no caption": 1}


def test_original_release_without_test_index_has_no_test_split(tmp_path):
    records, conversion = run(original_form(tmp_path / "MSRVTT", with_test=False), tmp_path)
    assert summary(records) == OFFICIAL[:4]
    assert conversion.written == {"train": 3, "val": 1}


def test_full_index_wins_over_the_original_files(tmp_path):
    root = original_form(tmp_path / "MSRVTT")
    index = _index(["video1"])
    index["sentences"][0]["caption"] = "from MSRVTT_data.json"
    (root / "MSRVTT_data.json").write_text(json.dumps(index))
    records, _ = run(root, tmp_path)
    assert [(r.id, r.fields["text"]) for r in records] == [("msrvtt/video1", ["from MSRVTT_data.json"])]


@pytest.mark.parametrize("form", [full_form, original_form])
def test_jsfusion_csv_makes_the_1k_a_test_split(tmp_path, form):
    root = form(tmp_path / "root")
    write_csv(root, [("video6", "a man reads the news"), ("video1", "a cat on a piano"),
                     ("video7010", "not in this index")])
    records, conversion = run(root, tmp_path)
    assert summary(records) == [
        ("msrvtt/video0", "train", ["someone cooks pasta", "a man is cooking"], 3),
        ("msrvtt/video3", "train", ["kids play football", "a soccer game"], 16),  # official test, not in 1k-A
        ("msrvtt/video10", "train", ["cars race on a track"], 0),
        ("msrvtt/video2", "val", ["a woman sings"], 9),
        ("msrvtt/video1", "test", ["a cat on a piano"], 7),
        ("msrvtt/video6", "test", ["a man reads the news"], 4),
    ]
    assert conversion.written == {"train": 3, "val": 1, "test": 2}
    assert conversion.skipped == {"video file missing": 1, "no caption": 1, "video not in index": 1}


def test_jsfusion_csv_with_wrong_header_is_named(tmp_path):
    root = full_form(tmp_path / "msrvtt_data")
    write_csv(root, [("video6", "news")], header="video_id,sentence")
    with pytest.raises(ConversionError, match="MSRVTT_JSFUSION_test.csv.*key,vid_key,video_id,sentence"):
        run(root, tmp_path)


def test_missing_root_index_and_video_folders_are_named(tmp_path):
    with pytest.raises(ConversionError, match="expected the MSR-VTT folder at .*nowhere"):
        run(tmp_path / "nowhere", tmp_path)
    root = tmp_path / "empty"
    (root / "TrainValVideo").mkdir(parents=True)
    with pytest.raises(ConversionError, match="MSRVTT_data.json or train_val_videodatainfo.json"):
        run(root, tmp_path)
    (root / "TrainValVideo").rmdir()
    (root / "MSRVTT_data.json").write_text(json.dumps(_index(["video0"])))
    with pytest.raises(ConversionError, match="TrainValVideo/, TestVideo/, videos/all/, MSRVTT_Videos/"):
        run(root, tmp_path)


@pytest.mark.parametrize(("break_index", "message"), [
    (lambda index: index.pop("videos"), "missing key 'videos'"),
    (lambda index: index.pop("sentences"), "missing key 'sentences'"),
    (lambda index: index["videos"][0].pop("video_id"), "missing key 'video_id'"),
    (lambda index: index["videos"][0].pop("split"), "missing key 'split'"),
    (lambda index: index["sentences"][0].pop("caption"), "missing key 'caption'"),
    (lambda index: index["videos"][0].update(split="dev"), "unknown split 'dev'"),
])
def test_malformed_index_names_the_file_and_key(tmp_path, break_index, message):
    root = full_form(tmp_path / "msrvtt_data")
    index = _index(list(VIDEOS))
    break_index(index)
    (root / "MSRVTT_data.json").write_text(json.dumps(index))
    with pytest.raises(ConversionError, match=f"MSRVTT_data.json.*{message}"):
        run(root, tmp_path)


def test_index_that_is_not_json_is_named(tmp_path):
    root = original_form(tmp_path / "MSRVTT")
    (root / "test_videodatainfo.json").write_text('{"videos": [')
    with pytest.raises(ConversionError, match="test_videodatainfo.json: not valid JSON"):
        run(root, tmp_path)


def test_a_null_caption_is_dropped_like_a_blank_one(tmp_path):
    root = full_form(tmp_path / "msrvtt_data")
    index = _index(list(VIDEOS))
    for sentence in index["sentences"]:
        if sentence["video_id"] in ("video0", "video1"):
            sentence["caption"] = None if sentence["sen_id"] != 3 else "a man is cooking"
    (root / "MSRVTT_data.json").write_text(json.dumps(index))
    written, conversion = run(root, tmp_path)
    records = {r.id: r.fields["text"] for r in written}
    assert records["msrvtt/video0"] == ["a man is cooking"] and "msrvtt/video1" not in records
    assert conversion.skipped["no caption"] == 2  # video1, and video5 which never had one
