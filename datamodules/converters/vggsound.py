"""VGGSound (Chen et al., ICASSP 2020; robots.ox.ac.uk/~vgg/data/vggsound/): about 200,000 ten-second
YouTube clips in 309 classes, each chosen so that the sound's source is seen.

Expected layout under `root`:

    <root>/vggsound.csv      rows `youtube_id,start_seconds,label,split` (split train or test), no header
    <root>/video/<youtube_id>_<start_seconds:06d>.mp4     the clips as distributed (also looked for in
                                                          videos/ and the root; `<id>_<start>.mp4` too)

The official splits are kept, test -> test and train -> train, but for a val split carved from train
by YouTube video (VAL_PERCENT of the video ids, chosen by a hash of the id, so the same on every
machine): clips cut from one video never sit on both sides.

`vggsound`: one record per row whose clip exists: id `vggsound/<youtube_id>_<start:06d>`, `video`,
`audio` (the clip's sound, written once as `<manifest folder>/vggsound/audio/<clip>.wav`, see
audio_track.py), `label`, `text` (a prompt naming it), `youtube_id`, `start`. Skipped and counted: a
missing clip, one without a decodable sound track. `vggsound-shared`: only the classes VGGSound shares
with UCF-101 in CMG's cross-modal task (shared_classes.py), with `audio` and no `video`: in that task
VGGSound is the sound side, UCF-101 the seen side. Records are written in split order (train, val,
test), each split in the CSV's order.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .audio_track import extract_audio
from .base import Conversion, ConversionError, expect, read_text, relative, write_manifest
from .shared_classes import shared_pairs

INDEX = "vggsound.csv"
CLIP_DIRS = ("video", "videos", "")
SPLITS = ("train", "test")
SPLIT_ORDER = ("train", "val", "test")
VAL_PERCENT = 5
PROMPT = "a video of {}"


@dataclass(frozen=True)
class Row:
    youtube_id: str
    start: int
    label: str
    split: str

    @property
    def clip(self) -> str:
        return f"{self.youtube_id}_{self.start:06d}"


def convert(root: Path, out: Path) -> Conversion:
    """Write every VGGSound clip with its sound and label as a manifest at `out`."""
    return _convert(root, out, shared=False)


def convert_shared(root: Path, out: Path) -> Conversion:
    """Write the sound of VGGSound's clips in the classes shared with UCF-101 as a manifest at `out`."""
    return _convert(root, out, shared=True)


def _convert(root: Path, out: Path, shared: bool) -> Conversion:
    root = expect(root, "the VGGSound folder (holding vggsound.csv and video/)")
    rows = _read_index(root / INDEX)
    if shared:
        labels = {label for _, label in shared_pairs(root)}
        unknown = sorted(labels - {row.label for row in rows})
        if unknown:
            raise ConversionError(f"shared classes {', '.join(map(repr, unknown))} are not labels in {root / INDEX}")
        rows = [row for row in rows if row.label in labels]
    folders = [root / name for name in CLIP_DIRS if (root / name).is_dir()]
    conversion = Conversion(out)
    records = _records(rows, _clip_files(folders), out, conversion, with_video=not shared)
    looked_for = f"<youtube_id>_<start:06d>.mp4 in {', '.join(map(str, folders))}"
    return write_manifest(out, records, conversion, looked_for)


def _read_index(path: Path) -> list[Row]:
    """The CSV's rows, checked, each with its split (val carved from train); in split order."""
    rows = []
    reader = csv.reader(io.StringIO(read_text(path, f"VGGSound's index {INDEX}"), newline=""))
    for fields in reader:
        where = f"{path}:{reader.line_num}"
        if not fields or not "".join(fields).strip():
            continue
        if len(fields) != 4:
            raise ConversionError(f"{where}: expected youtube_id,start_seconds,label,split, found {fields}")
        youtube_id, start, label, split = (field.strip() for field in fields)
        if not start.isdigit():
            if reader.line_num == 1:  # a header line some copies add
                continue
            raise ConversionError(f"{where}: start_seconds must be a whole number, found {start!r}")
        if split not in SPLITS:
            raise ConversionError(f"{where}: split must be train or test, found {split!r}")
        rows.append(Row(youtube_id, int(start), label, "val" if split == "train" and _held_out(youtube_id) else split))
    return sorted(rows, key=lambda row: SPLIT_ORDER.index(row.split))  # stable: CSV order within a split


def _held_out(youtube_id: str) -> bool:
    """Whether a train video's clips go to val: a hash, so no random state and no dependence on order."""
    return int(hashlib.sha256(youtube_id.encode()).hexdigest()[:8], 16) % 100 < VAL_PERCENT


def _clip_files(folders: list[Path]) -> dict[str, Path]:
    """The mp4s in the clip folders by stem, the first folder winning: one listing instead of a file
    check per row (200,000 rows)."""
    files: dict[str, Path] = {}
    for folder in reversed(folders):
        with os.scandir(folder) as entries:
            files.update({entry.name[:-4]: Path(entry.path) for entry in entries if entry.name.endswith(".mp4")})
    return files


def _records(rows: list[Row], files: dict[str, Path], out: Path, conversion: Conversion,
             with_video: bool) -> Iterator[dict[str, Any]]:
    for row in tqdm(rows, desc="VGGSound clips", unit="clip", mininterval=5):
        path = files.get(row.clip) or files.get(f"{row.youtube_id}_{row.start}")
        if path is None:
            conversion.skipped["video file missing"] += 1
            continue
        wav = out.parent / "vggsound" / "audio" / f"{row.clip}.wav"
        problem = extract_audio(path, wav)
        if problem is not None:
            conversion.skipped[problem] += 1
            continue
        record = {"id": f"vggsound/{row.clip}", "split": row.split, "audio": relative(wav, out), "label": row.label,
                  "text": PROMPT.format(row.label), "youtube_id": row.youtube_id, "start": row.start}
        if with_video:
            record["video"] = relative(path, out)
        yield record
