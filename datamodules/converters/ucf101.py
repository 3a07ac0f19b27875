"""UCF-101 (Soomro et al., 2012; crcv.ucf.edu/data/UCF101.php): 13,320 action clips in 101 classes.

Expected layout under `root` (the folder both archives were extracted in):

    <root>/UCF-101/<Class>/v_<Class>_g<XX>_c<YY>.avi     from UCF101.rar
    <root>/ucfTrainTestlist/classInd.txt                 lines `<index> <Class>`
    <root>/ucfTrainTestlist/trainlist01.txt              lines `<Class>/v_<Class>_gXX_cYY.avi <index>`
    <root>/ucfTrainTestlist/testlist01.txt               lines `<Class>/v_<Class>_gXX_cYY.avi`
                                                         (from UCF101TrainTestSplits-RecognitionTask.zip)

Split 1, the one most papers report (CMG's among them), is kept: testlist01 -> test, trainlist01 ->
train, except the VAL_GROUPS highest-numbered train groups of each class, which become val. A group
(gXX) is clips cut from one long video, so val is carved by whole groups, as the official splits are:
no group has clips on both sides. Many clips have no sound track, so records are video only.

`ucf101`: one record per listed clip whose file exists: id `ucf101/<file stem>`, `video`, `label` (the
class name in words, "ApplyEyeMakeup" -> "apply eye makeup"), `text` (a prompt naming it), `class` (the
folder name) and `group`. `ucf101-shared`: only the classes UCF-101 shares with VGGSound in CMG's
cross-modal task (shared_classes.py), each labelled with the name the VGGSound manifest uses too.
Records are written in split order (train, val, test), each split in its list's order.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from .base import Conversion, ConversionError, expect, read_text, relative, write_manifest
from .shared_classes import shared_pairs

VIDEOS = "UCF-101"
LISTS = "ucfTrainTestlist"
LIST_FILES = {"train": "trainlist01.txt", "test": "testlist01.txt"}
VAL_GROUPS = 2  # per class: 2 of split 1's 18 train groups, about 11% of train
SPLIT_ORDER = ("train", "val", "test")
PROMPT = "a video of {}"
GROUP = re.compile(r"_g(\d+)_c\d+$")
WORD_BOUNDARY = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def convert(root: Path, out: Path) -> Conversion:
    """Write split 1 of UCF-101, all 101 classes, as a manifest at `out`."""
    return _convert(root, out, None)


def convert_shared(root: Path, out: Path) -> Conversion:
    """Write split 1 of UCF-101's classes shared with VGGSound, under the shared names."""
    return _convert(root, out, dict(shared_pairs(root)))


def words(name: str) -> str:
    """A CamelCase class folder as a prompt's class name: "YoYo" -> "yo yo"."""
    return WORD_BOUNDARY.sub(" ", name).lower()


def _convert(root: Path, out: Path, names: dict[str, str] | None) -> Conversion:
    """`names`: the classes to keep, each with its label; None keeps every class, labelled in words."""
    root = expect(root, "the UCF-101 folder (holding UCF-101/ and ucfTrainTestlist/)")
    lists = expect(root / LISTS, f"UCF-101's split lists {LISTS}/ (from UCF101TrainTestSplits-RecognitionTask.zip)")
    classes = _class_index(lists / "classInd.txt")
    if names is not None:
        unknown = sorted(set(names) - classes)
        if unknown:
            raise ConversionError(f"shared classes {', '.join(unknown)} are not in {lists / 'classInd.txt'}")
    videos = expect(root / VIDEOS, f"UCF-101's clips folder {VIDEOS}/ (from UCF101.rar)")
    clips = {split: _read_list(lists / name, classes) for split, name in LIST_FILES.items()}
    splits = _carve_val(clips["train"]) | {clip: "test" for clip in clips["test"]}
    conversion = Conversion(out)
    records: list[dict[str, Any]] = []
    for clip in clips["train"] + clips["test"]:
        name = clip.split("/")[0]
        if names is not None and name not in names:
            continue
        path = videos / clip
        if not path.is_file():
            conversion.skipped["video file missing"] += 1
            continue
        label = words(name) if names is None else names[name]
        records.append({"id": f"ucf101/{path.stem}", "split": splits[clip], "video": relative(path, out),
                        "label": label, "text": PROMPT.format(label), "class": name, "group": _group(clip)})
    records.sort(key=lambda record: SPLIT_ORDER.index(record["split"]))  # stable: list order within a split
    return write_manifest(out, records, conversion, f"the listed <Class>/v_<Class>_gXX_cYY.avi in {videos}")


def _class_index(path: Path) -> set[str]:
    classes = set()
    for number, line in enumerate(read_text(path, "UCF-101's class list classInd.txt").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[0].isdigit():
            raise ConversionError(f"{path}:{number}: expected `<index> <Class>`, found {line.strip()!r}")
        classes.add(fields[1])
    return classes


def _read_list(path: Path, classes: set[str]) -> list[str]:
    """The clips of a split list, `<Class>/<file>.avi`, checked against classInd.txt."""
    clips = []
    for number, line in enumerate(read_text(path, f"UCF-101's split list {path.name}").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        clip = fields[0]
        name, _, file = clip.partition("/")
        if not file or GROUP.search(Path(file).stem) is None:
            raise ConversionError(f"{path}:{number}: expected `<Class>/v_<Class>_gXX_cYY.avi`, found {clip!r}")
        if name not in classes:
            raise ConversionError(f"{path}:{number}: class {name!r} is not in classInd.txt beside it")
        clips.append(clip)
    return clips


def _group(clip: str) -> int:
    return int(GROUP.search(Path(clip).stem)[1])


def _carve_val(train: list[str]) -> dict[str, str]:
    """Each train clip's split: val for the VAL_GROUPS highest groups of its class (when the class has
    more train groups than that, so that train keeps some), train otherwise."""
    groups: dict[str, set[int]] = defaultdict(set)
    for clip in train:
        groups[clip.split("/")[0]].add(_group(clip))
    val = {name: set(sorted(found)[-VAL_GROUPS:]) if len(found) > VAL_GROUPS else set()
           for name, found in groups.items()}
    return {clip: "val" if _group(clip) in val[clip.split("/")[0]] else "train" for clip in train}
