"""What every converter shares: the error for a layout it does not recognise, the report of what it
wrote and skipped, and the atomic manifest writer."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable


class ConversionError(ValueError):
    """The dataset's folder is missing or not laid out as expected: the message names the file it
    expected and where."""


@dataclass
class Conversion:
    """What a converter wrote: the manifest, records per split, and skips counted by reason."""

    manifest: Path
    written: Counter = field(default_factory=Counter)  # split -> records
    skipped: Counter = field(default_factory=Counter)  # reason -> records

    def summary(self) -> str:
        splits = ", ".join(f"{split} {count}" for split, count in sorted(self.written.items()))
        skips = "; ".join(f"{count} {reason}" for reason, count in self.skipped.most_common()) or "none"
        return f"wrote {sum(self.written.values())} records to {self.manifest} ({splits}); skipped: {skips}"


def write_manifest(out: Path, records: Iterable[dict[str, Any]], conversion: Conversion) -> Conversion:
    """Write records (media paths relative to `out`'s folder) as JSON Lines, atomically, counting them
    per split into `conversion`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as lines:
            for record in records:  # converters may yield lazily and fail part-way: leave nothing behind
                conversion.written[record["split"]] += 1
                lines.write(json.dumps(record, ensure_ascii=False) + "\n")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    return conversion


def relative(path: Path, out: Path) -> str:
    """A media path as the manifest stores it: relative to the manifest's folder."""
    return os.path.relpath(path.resolve(), out.parent.resolve())


def expect(path: Path, what: str) -> Path:
    """`path`, or a ConversionError naming what should be there."""
    if not path.exists():
        raise ConversionError(f"expected {what} at {path}, found nothing: is the root the dataset's top folder?")
    return path


def load_json(path: Path, what: str) -> Any:
    """A dataset's JSON index, or a ConversionError naming it."""
    try:
        return json.loads(expect(path, what).read_text(encoding="utf-8"))
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
