"""MSR-VTT (10,000 web video clips, 20 captions each) to the manifest.

Layout expected under `root`: an index, either `MSRVTT_data.json` (the full-dataset annotation file as
CLIP4Clip and others distribute it) or the original release's `train_val_videodatainfo.json` plus, when
present, `test_videodatainfo.json` (MSRVTT_data.json wins when both forms are there). Each index holds
`videos` (`video_id`, `split` in train/validate/test, `category`, ...) and `sentences` (`video_id`,
`caption`, `sen_id`). Videos are `<video_id>.mp4`, looked up in `TrainValVideo/`, `TestVideo/`,
`videos/all/` and `MSRVTT_Videos/` in that order (at least one of those folders must exist). Optionally
`MSRVTT_JSFUSION_test.csv` (header `key,vid_key,video_id,sentence`) selects the 1k-A test split.

Splits: without the CSV the official ones, train -> train, validate -> val, test -> test, each video with
all its captions in `sen_id` order. With the CSV the 1k-A protocol that most retrieval papers report:
the CSV's videos are the test split, each with `text` a one-element list holding its CSV query sentence
(a list, like every other record, so `text` has one type), official validate videos stay val so that
model selection stays off the test set, and every other video is train. A CSV video absent from the
index is skipped ("video not in index"). Records are `msrvtt/<video_id>` with `video`, `text` and
`category`, ordered train, val, test, then by the video id's number.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .base import Conversion, ConversionError, expect, load_json, read_text, relative, require, write_manifest

FULL_INDEX = "MSRVTT_data.json"
TRAIN_VAL_INDEX = "train_val_videodatainfo.json"
TEST_INDEX = "test_videodatainfo.json"
JSFUSION_CSV = "MSRVTT_JSFUSION_test.csv"
JSFUSION_HEADER = ["key", "vid_key", "video_id", "sentence"]
VIDEO_DIRS = ("TrainValVideo", "TestVideo", "videos/all", "MSRVTT_Videos")
OFFICIAL_SPLITS = {"train": "train", "validate": "val", "test": "test"}
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}


def convert(root: Path, out: Path) -> Conversion:
    """Write MSR-VTT's videos with their captions and categories as a manifest at `out`."""
    root = expect(Path(root), "the MSR-VTT folder")
    videos, captions = _read_index(root)
    video_dirs = _video_dirs(root)
    conversion = Conversion(out)
    csv_path = root / JSFUSION_CSV
    if csv_path.is_file():
        splits, captions = _jsfusion_splits(csv_path, videos, captions, conversion)
    else:
        splits = {video_id: OFFICIAL_SPLITS[video["split"]] for video_id, video in videos.items()}
    records = _records(videos, captions, splits, video_dirs, out, conversion)
    looked_for = f"<video_id>.mp4 in {', '.join(map(str, video_dirs))}"
    return write_manifest(out, records, conversion, looked_for)


def _read_index(root: Path) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    """Videos by id and their captions in sen_id order, from whichever index form is present."""
    if (root / FULL_INDEX).is_file():
        files = [root / FULL_INDEX]
    elif (root / TRAIN_VAL_INDEX).is_file():
        files = [path for path in (root / TRAIN_VAL_INDEX, root / TEST_INDEX) if path.is_file()]
    else:
        raise ConversionError(
            f"expected the MSR-VTT index {FULL_INDEX} or {TRAIN_VAL_INDEX} (+ {TEST_INDEX}) under {root}, "
            "found neither: is the root the dataset's top folder?"
        )
    videos: dict[str, dict[str, Any]] = {}
    sentences: list[tuple[int, str, str]] = []
    for path in files:
        index = load_json(path, "the MSR-VTT index")
        for video in require(index, "videos", path):
            video_id, split = require(video, "video_id", path), require(video, "split", path)
            if split not in OFFICIAL_SPLITS:
                raise ConversionError(f"{path}: unknown split {split!r} for {video_id} "
                                      f"(expected one of {sorted(OFFICIAL_SPLITS)})")
            videos[video_id] = video
        for sentence in require(index, "sentences", path):
            caption = require(sentence, "caption", path)
            sentences.append((sentence.get("sen_id", 0), require(sentence, "video_id", path), caption))
    captions: dict[str, list[str]] = {}
    for _, video_id, caption in sorted(sentences, key=lambda sentence: sentence[0]):
        if isinstance(caption, str) and caption.strip():  # some releases hold null captions: none to keep
            captions.setdefault(video_id, []).append(caption)
    return videos, captions


def _video_dirs(root: Path) -> list[Path]:
    """The video folders present, in lookup order; none at all means the videos were not unpacked here."""
    present = [root / name for name in VIDEO_DIRS if (root / name).is_dir()]
    if not present:
        raise ConversionError(
            f"expected a video folder under {root} (one of {', '.join(d + '/' for d in VIDEO_DIRS)}), "
            "found none: unpack the MSR-VTT videos there"
        )
    return present


def _jsfusion_splits(
    csv_path: Path,
    videos: dict[str, dict[str, Any]],
    captions: dict[str, list[str]],
    conversion: Conversion,
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """1k-A splits: the CSV's videos are test with their CSV sentence; validate stays val; the rest train."""
    queries: dict[str, list[str]] = {}
    reader = csv.DictReader(io.StringIO(read_text(csv_path, "the 1k-A test list"), newline=""))
    if reader.fieldnames != JSFUSION_HEADER:
        raise ConversionError(
            f"{csv_path}: header should be {','.join(JSFUSION_HEADER)} (got {reader.fieldnames})"
        )
    for row in reader:
        if not row["video_id"] or not row["sentence"]:
            raise ConversionError(f"{csv_path}:{reader.line_num}: row without a video_id or sentence")
        queries.setdefault(row["video_id"], []).append(row["sentence"])
    unknown = len(queries.keys() - videos.keys())
    if unknown:
        conversion.skipped["video not in index"] += unknown
    splits = {
        video_id: "test" if video_id in queries else "val" if video["split"] == "validate" else "train"
        for video_id, video in videos.items()
    }
    return splits, {**captions, **queries}


def _records(
    videos: dict[str, dict[str, Any]],
    captions: dict[str, list[str]],
    splits: dict[str, str],
    video_dirs: list[Path],
    out: Path,
    conversion: Conversion,
) -> Iterator[dict[str, Any]]:
    """One record per video with a file and a caption, in split order then by the id's number."""
    for video_id in sorted(videos, key=lambda video_id: (SPLIT_ORDER[splits[video_id]], _number(video_id))):
        video = _video_file(video_id, video_dirs)
        if video is None:
            conversion.skipped["video file missing"] += 1
        elif not captions.get(video_id):
            conversion.skipped["no caption"] += 1
        else:
            record = {"id": f"msrvtt/{video_id}", "split": splits[video_id], "video": relative(video, out),
                      "text": captions[video_id]}
            if "category" in videos[video_id]:
                record["category"] = videos[video_id]["category"]
            yield record


def _number(video_id: str) -> tuple[int, str]:
    """Sort key: `video10` after `video9`, the id itself breaking ties."""
    digits = re.sub(r"\D", "", video_id)
    return (int(digits) if digits else -1, video_id)


def _video_file(video_id: str, video_dirs: list[Path]) -> Path | None:
    for folder in video_dirs:
        path = folder / f"{video_id}.mp4"
        if path.is_file():
            return path
    return None
