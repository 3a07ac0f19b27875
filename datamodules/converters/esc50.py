"""ESC-50 (github.com/karolpiczak/ESC-50, as cloned or extracted): 2000 five-second environmental sound
clips in 50 classes.

Expected layout:

    <root>/meta/esc50.csv         header `filename,fold,target,category,esc10,src_file,take`
    <root>/audio/<filename>       e.g. audio/1-100032-A-0.wav

The root may also be the folder the GitHub archive was extracted in, holding `ESC-50-master/`.

One record per CSV row, in the CSV's own order: id `esc50/<filename stem>`, `audio`, `label` (the
category with underscores as spaces, e.g. "chirping birds", a class name usable in zero-shot prompts),
`fold` (1..5) and `esc10` (whether the clip is in the ESC-10 subset). Every record is in split `test`:
ESC-50 is used for zero-shot classification over all 2000 clips; the official fold is kept in `fold` so
that the 5-fold cross-validation of the original benchmark can still be done.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .base import Conversion, ConversionError, expect, read_text, relative, top_folder, write_manifest

COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
FOLDS = range(1, 6)
BOOLEANS = {"True": True, "False": False}


def convert(root: Path, out: Path) -> Conversion:
    """Write the manifest of every clip listed in `meta/esc50.csv` whose wav file exists."""
    root = top_folder(root, ["meta"], "ESC-50-master")
    index = expect(root / "meta" / "esc50.csv", "the ESC-50 metadata CSV (meta/esc50.csv)")
    rows = _rows(index)
    audio = expect(root / "audio", "ESC-50's clips folder audio/")
    conversion = Conversion(out)
    return write_manifest(out, _records(rows, audio, out, conversion), conversion, f"the CSV's wav files in {audio}")


def _rows(index: Path) -> list[dict[str, Any]]:
    """The CSV's rows, all checked before anything is written, so that a malformed CSV leaves no manifest."""
    reader = csv.DictReader(io.StringIO(read_text(index, "the ESC-50 metadata CSV"), newline=""))
    missing = [column for column in COLUMNS if column not in (reader.fieldnames or [])]
    if missing:
        raise ConversionError(
            f"{index}: header lacks the column(s) {', '.join(missing)} (expected {','.join(COLUMNS)})"
        )
    rows: list[dict[str, Any]] = []
    for row in reader:
        where = f"{index}:{reader.line_num}"
        if None in row.values():
            raise ConversionError(f"{where}: the row has fewer fields than the header")
        rows.append({**row, "fold": _fold(row["fold"], where), "esc10": _esc10(row["esc10"], where)})
    return rows


def _records(rows: list[dict[str, Any]], audio: Path, out: Path, conversion: Conversion) -> Iterator[dict[str, Any]]:
    """One record per CSV row, skipping (and counting) rows whose wav file is missing."""
    for row in rows:
        path = audio / row["filename"]
        if not path.is_file():
            conversion.skipped["audio file missing"] += 1
            continue
        yield {"id": f"esc50/{path.stem}", "split": "test", "audio": relative(path, out),
               "label": row["category"].replace("_", " "), "fold": row["fold"], "esc10": row["esc10"]}


def _fold(value: str, where: str) -> int:
    """The fold number, which must be one of the 5 official folds."""
    if not value.strip().isdigit() or int(value) not in FOLDS:
        raise ConversionError(f"{where}: fold must be 1..5, found {value!r}")
    return int(value)


def _esc10(value: str, where: str) -> bool:
    """The `esc10` flag, written `True` or `False` in the CSV."""
    if value not in BOOLEANS:
        raise ConversionError(f"{where}: esc10 must be True or False, found {value!r}")
    return BOOLEANS[value]
