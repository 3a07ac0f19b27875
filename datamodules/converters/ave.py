"""AVE, the Audio-Visual Event dataset (Tian et al., ECCV 2018; github.com/YapengTian/AVE-ECCV18): 4,143
ten-second YouTube clips in 28 event categories, each with the seconds where the event is both seen
and heard.

Expected layout (`AVE_Dataset/` as distributed; the root may also be the folder holding it):

    <root>/trainSet.txt, valSet.txt, testSet.txt   lines `Category&VideoID&Quality&StartTime&EndTime`
    <root>/AVE/<VideoID>.mp4

(`Annotations.txt`, every split's rows together under a header line, is not needed: the split files
hold the same rows.) The official splits are kept: trainSet -> train, valSet -> val, testSet -> test;
a video in two split files is refused, since it would leak between them.

One record per video: id `ave/<VideoID>`, `video`, `audio` (the clip's sound, written once as
`<manifest folder>/ave/audio/<VideoID>.wav`, see audio_track.py), `label` (the category as written,
e.g. "Church bell"), `text` (a prompt naming it), `quality` and `events` ([[start, end], ...] in
seconds: a video listed on several rows has several events; the release's few rows with StartTime ==
EndTime add none). Skipped and counted: a video whose mp4 is missing, one without a decodable audio
track, one listed under two categories. Records are written in split order (train, val, test), each
split in its file's order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .audio_track import extract_audio
from .base import Conversion, ConversionError, expect, read_text, relative, top_folder, write_manifest

SPLIT_FILES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}
HEADER = "Category&VideoID&Quality&StartTime&EndTime"
PROMPT = "a video of {}"


@dataclass
class Video:
    """One video's rows in a split file."""

    video_id: str
    split: str
    categories: set[str] = field(default_factory=set)
    label: str = ""
    quality: str = ""
    events: list[list[int]] = field(default_factory=list)


def convert(root: Path, out: Path) -> Conversion:
    """Write AVE's videos, their sound and their event category as a manifest at `out`."""
    root = top_folder(expect(root, "the AVE folder (AVE_Dataset/)"), list(SPLIT_FILES.values()), "AVE_Dataset")
    videos = _read_splits(root)
    clips = expect(root / "AVE", "AVE's clips folder AVE/ (<VideoID>.mp4)")
    conversion = Conversion(out)
    records = _records(videos, clips, out, conversion)
    return write_manifest(out, records, conversion, f"<VideoID>.mp4 with a sound track in {clips}")


def _read_splits(root: Path) -> list[Video]:
    """Every split file's videos, all read and checked before any audio is extracted."""
    videos: dict[str, Video] = {}
    for split, name in SPLIT_FILES.items():
        path = root / name
        for number, line in enumerate(read_text(path, f"AVE's {split} list {name}").splitlines(), start=1):
            if not line.strip() or line.strip() == HEADER:
                continue
            category, video_id, quality, start, end = _fields(line, f"{path}:{number}")
            video = videos.setdefault(video_id, Video(video_id, split, label=category, quality=quality))
            if video.split != split:
                raise ConversionError(
                    f"{path}:{number}: video {video_id} is also in {SPLIT_FILES[video.split]}; the official split"
                    " files do not overlap: re-download them"
                )
            video.categories.add(category)
            if start < end:  # a few rows of the release are empty events (start == end): no seconds to keep
                video.events.append([start, end])
    return list(videos.values())


def _fields(line: str, where: str) -> tuple[str, str, str, int, int]:
    """A row's five fields, the times as whole seconds within the 10-second clip."""
    fields = [value.strip() for value in line.split("&")]
    if len(fields) != 5 or not fields[0] or not fields[1]:
        raise ConversionError(f"{where}: expected {HEADER}, found {line.strip()!r}")
    category, video_id, quality, start, end = fields
    if not (start.isdigit() and end.isdigit() and int(start) <= int(end) <= 10):
        raise ConversionError(f"{where}: StartTime and EndTime must be whole seconds, 0 <= start <= end <= 10;"
                              f" found {start!r} and {end!r}")
    return category, video_id, quality, int(start), int(end)


def _records(videos: list[Video], clips: Path, out: Path, conversion: Conversion) -> Iterator[dict[str, Any]]:
    order = list(SPLIT_FILES)
    for video in sorted(videos, key=lambda video: order.index(video.split)):  # stable: file order within
        path = clips / f"{video.video_id}.mp4"
        if len(video.categories) > 1:
            conversion.skipped["video under several categories"] += 1
            continue
        if not path.is_file():
            conversion.skipped["video file missing"] += 1
            continue
        wav = out.parent / "ave" / "audio" / f"{video.video_id}.wav"
        problem = extract_audio(path, wav)
        if problem is not None:
            conversion.skipped[problem] += 1
            continue
        yield {"id": f"ave/{video.video_id}", "split": video.split, "video": relative(path, out),
               "audio": relative(wav, out), "label": video.label, "text": PROMPT.format(video.label.lower()),
               "quality": video.quality, "events": video.events}
