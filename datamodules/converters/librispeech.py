"""LibriSpeech (openslr.org/12) as extracted from its tarballs: speech clips with their transcripts.

Expected layout, `<root>` being the `LibriSpeech/` folder holding any of the subset folders
`train-clean-100`, `train-clean-360`, `train-other-500`, `dev-clean`, `dev-other`, `test-clean`,
`test-other`:

    <root>/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utterance>.flac
    <root>/<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt   lines "<utterance id> TRANSCRIPT"

The root may also be the folder the tarballs were extracted in, holding `LibriSpeech/`; clips converted
to `.wav` (as some mirrors distribute them) are read too, the `.flac` winning where both are present.

One record per transcript line: id `librispeech/<utterance id>`, `audio`, `text` (the transcript as
written, upper case), `subset` and `speaker`. The official subsets keep their roles: train-* -> train,
dev-* -> val, test-* -> test, so that results stay comparable with published ones (the speakers of the
subsets are disjoint). Records are written in split order (train, val, test), then by subset, speaker,
chapter and utterance id, each sorted by name.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .base import Conversion, ConversionError, expect, read_text, relative, top_folder, write_manifest

SUBSETS: dict[str, str] = {  # subset folder -> split, in the order records are written
    "train-clean-100": "train",
    "train-clean-360": "train",
    "train-other-500": "train",
    "dev-clean": "val",
    "dev-other": "val",
    "test-clean": "test",
    "test-other": "test",
}
AUDIO_SUFFIXES = (".flac", ".wav")  # in order of preference


def convert(root: Path, out: Path) -> Conversion:
    """Write the manifest of every subset found under `root`."""
    root = top_folder(expect(root, "the LibriSpeech folder (holding subset folders such as train-clean-100)"),
                      list(SUBSETS), "LibriSpeech")
    subsets = [name for name in SUBSETS if (root / name).is_dir()]
    if not subsets:
        raise ConversionError(
            f"expected at least one subset folder under {root} ({', '.join(SUBSETS)}), found none: "
            "is the root the extracted LibriSpeech/ folder?"
        )
    conversion = Conversion(out)
    records = (record for subset in subsets for record in _subset(root / subset, out, conversion))
    looked_for = (f"<speaker>-<chapter>-<utterance>.flac (or .wav) beside each <speaker>-<chapter>.trans.txt in"
                  f" {root}/{{{','.join(subsets)}}}/<speaker>/<chapter>/")
    return write_manifest(out, records, conversion, looked_for)


def _subset(folder: Path, out: Path, conversion: Conversion) -> Iterator[dict[str, Any]]:
    """The records of one subset folder, chapter by chapter in sorted order."""
    for speaker in tqdm(_folders(folder), desc=f"LibriSpeech {folder.name}", unit="speaker"):
        for chapter in _folders(speaker):
            yield from _chapter(chapter, folder.name, speaker.name, out, conversion)


def _chapter(folder: Path, subset: str, speaker: str, out: Path, conversion: Conversion) -> Iterator[dict[str, Any]]:
    """The records of one chapter: every utterance that has both a transcript line and an audio file."""
    transcripts = _transcripts(folder / f"{speaker}-{folder.name}.trans.txt")
    clips: dict[str, Path] = {}
    for suffix in AUDIO_SUFFIXES:
        for path in folder.glob(f"*{suffix}"):
            clips.setdefault(path.stem, path)
    for utterance in sorted(transcripts.keys() | clips.keys()):
        if utterance not in clips:
            conversion.skipped["audio file missing"] += 1
        elif utterance not in transcripts:
            conversion.skipped["no transcript line"] += 1
        else:
            yield {"id": f"librispeech/{utterance}", "split": SUBSETS[subset], "audio": relative(clips[utterance], out),
                   "text": transcripts[utterance], "subset": subset, "speaker": speaker}


def _transcripts(path: Path) -> dict[str, str]:
    """Utterance id -> transcript from a `.trans.txt` file (none if the file is missing: its clips are
    then skipped as having no transcript line)."""
    if not path.is_file():
        return {}
    transcripts: dict[str, str] = {}
    for number, line in enumerate(read_text(path, "a chapter's transcripts").split("\n"), start=1):
        if not line.strip():
            continue
        utterance, _, text = line.rstrip().partition(" ")
        if not text.strip():
            raise ConversionError(f"{path}:{number}: expected '<utterance id> TRANSCRIPT', found {line.rstrip()!r}")
        if utterance in transcripts:
            raise ConversionError(f"{path}:{number}: utterance id {utterance!r} appears twice")
        transcripts[utterance] = text
    return transcripts


def _folders(folder: Path) -> list[Path]:
    """The sub-folders of `folder`, sorted by name (files such as READMEs are ignored)."""
    return sorted(path for path in folder.iterdir() if path.is_dir())
