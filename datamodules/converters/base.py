"""What every converter shares: the error for a layout it does not recognise, the report of what it
wrote and skipped, the atomic manifest writer (which refuses to write none), and the lookups that
accept the layouts common downloads extract to."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from oneencoder.files import atomic_path


class ConversionError(ValueError):
    """The dataset's folder is missing or not laid out as expected: the message names the file it
    expected and where."""


@dataclass
class Conversion:
    """What a converter wrote: the manifest, records per split, and skips counted by reason."""

    manifest: Path
    written: Counter = field(default_factory=Counter)  # split -> records
    skipped: Counter = field(default_factory=Counter)  # reason -> records

    def skips(self) -> str:
        return "; ".join(f"{count} {reason}" for reason, count in self.skipped.most_common()) or "none"

    def summary(self) -> str:
        splits = ", ".join(f"{split} {count}" for split, count in sorted(self.written.items()))
        return f"wrote {sum(self.written.values())} records to {self.manifest} ({splits}); skipped: {self.skips()}"


def write_manifest(out: Path, records: Iterable[dict[str, Any]], conversion: Conversion, looked_for: str) -> Conversion:
    """Write records (media paths relative to `out`'s folder) as JSON Lines, atomically, counting them
    per split into `conversion`. No records at all is a ConversionError naming the skips and
    `looked_for` (where the converter looked for the media): an empty manifest only fails later."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, tmp.open("w", encoding="utf-8") as lines:
        for record in records:  # converters may yield lazily and fail part-way: leave nothing behind
            conversion.written[record["split"]] += 1
            lines.write(json.dumps(record, ensure_ascii=False) + "\n")
        if not conversion.written:
            raise ConversionError(
                f"found no record to write (skipped: {conversion.skips()}); looked for {looked_for}."
                f" Nothing was written to {out}: is the root the dataset's top folder, with its media unpacked?"
            )
    return conversion


def check_output(out: Path) -> None:
    """Refuse, before any work, an output path that cannot become the manifest file."""
    if out.is_dir():
        raise ConversionError(f"{out} is a folder; give the manifest's file name, e.g. {out / 'manifest.jsonl'}")
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ConversionError(f"{parent} is a file, so {out} cannot be written; choose another output path")


def relative(path: Path, out: Path) -> str:
    """A media path as the manifest stores it: relative to the manifest's folder."""
    return os.path.relpath(path.resolve(), out.parent.resolve())


def expect(path: Path, what: str) -> Path:
    """`path`, or a ConversionError naming what should be there."""
    if not path.exists():
        raise ConversionError(f"expected {what} at {path}, found nothing: is the root the dataset's top folder?")
    return path


def nested(folder: Path, name: str) -> Path:
    """`folder/name`, or `folder/name/name` when that is a folder: archives that hold a folder of their
    own name extract so (Flickr30K's common download gives flickr30k-images/flickr30k-images/)."""
    inner = folder / name / name
    return inner if name and inner.is_dir() else folder / name


def top_folder(root: Path, markers: Sequence[str], wrapper: str) -> Path:
    """`root`, or `root/wrapper` when only that holds one of `markers`: the root may be the folder an
    archive was extracted into (ESC-50-master/, LibriSpeech/) rather than the archive's own folder."""
    def holds(folder: Path) -> bool:
        return any((folder / marker).exists() for marker in markers)

    return root / wrapper if not holds(root) and holds(root / wrapper) else root


def read_text(path: Path, what: str) -> str:
    """A dataset's text file (UTF-8, with or without a byte-order mark), or a ConversionError naming it."""
    try:
        return expect(path, what).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConversionError(
            f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); is it the dataset's own file,"
            " unmodified? Re-download it, or re-encode it as UTF-8"
        ) from None


def load_json(path: Path, what: str) -> Any:
    """A dataset's JSON index, or a ConversionError naming it."""
    try:
        return json.loads(read_text(path, what))
    except json.JSONDecodeError as error:
        raise ConversionError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None


def require(entry: Any, key: str, path: Path) -> Any:
    """`entry[key]`, or a ConversionError naming the file and the key."""
    if not isinstance(entry, dict) or key not in entry:
        raise ConversionError(f"{path}: missing key {key!r} (is this the dataset's own file, unmodified?)")
    return entry[key]


def captioned_image(
    record_id: str, split: str, image: Path, captions: list[str], out: Path, conversion: Conversion
) -> dict[str, Any] | None:
    """A record, or None (counted as a skip) when the image is missing or no caption is left."""
    captions = [c.strip() for c in captions if isinstance(c, str) and c.strip()]
    if not image.is_file():
        conversion.skipped["image file missing"] += 1
        return None
    if not captions:
        conversion.skipped["no caption"] += 1
        return None
    return {"id": record_id, "split": split, "image": relative(image, out), "text": captions}
