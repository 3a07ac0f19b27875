"""The manifest: JSON Lines, one record per line with `id`, `split` and any of `text`, `image`,
`audio`, `video` (paths relative to the manifest's folder) and `label`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPLITS = ("train", "val", "test")
MEDIA_FIELDS = ("image", "audio", "video")


class ManifestError(ValueError):
    """The manifest itself is malformed (bad JSON, missing or duplicate id, unknown split)."""


class BadRecordError(ValueError):
    """One record cannot be used: a missing or undecodable file, an empty caption."""


@dataclass(frozen=True)
class Record:
    manifest: Path
    line: int
    id: str
    split: str
    fields: dict[str, Any]

    def where(self) -> str:
        return f"{self.manifest}:{self.line} (id {self.id!r})"

    def path(self, modality: str) -> Path:
        return self.manifest.parent / self.fields[modality]

    def captions(self) -> list[str]:
        """The record's captions; an empty or non-string caption is a BadRecordError."""
        value = self.fields["text"]
        captions = [value] if isinstance(value, str) else value
        if not isinstance(captions, list) or not captions:
            raise BadRecordError(f"{self.where()}: `text` must be a non-empty string or list of strings")
        for caption in captions:
            if not isinstance(caption, str) or not caption.strip():
                raise BadRecordError(f"{self.where()}: empty caption {caption!r} in `text`")
        return captions

    def check(self, modalities: tuple[str, ...]) -> None:
        """Cheap checks before training starts: captions present, media files exist."""
        for modality in modalities:
            if modality == "text":
                self.captions()
            elif modality in MEDIA_FIELDS and not self.path(modality).is_file():
                raise BadRecordError(f"{self.where()}: {modality} file {self.path(modality)} does not exist")


def read_manifest(path: str | Path) -> list[Record]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} not found (expected a JSON Lines file, one record per line)")
    records: list[Record] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as error:
                raise ManifestError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(data, dict) or not isinstance(data.get("id"), str) or not data["id"]:
                raise ManifestError(f"{path}:{number}: each record needs a non-empty string `id`")
            if data.get("split") not in SPLITS:
                raise ManifestError(
                    f"{path}:{number}: `split` must be one of {SPLITS} (got {data.get('split')!r})"
                )
            if data["id"] in seen:
                raise ManifestError(f"{path}:{number}: id {data['id']!r} already used on line {seen[data['id']]}")
            seen[data["id"]] = number
            fields = {k: v for k, v in data.items() if k not in ("id", "split")}
            records.append(Record(path, number, data["id"], data["split"], fields))
    return records


def manifest_paths(paths: str | Path | list[str | Path]) -> list[str | Path]:
    """A `manifest` setting, one path or a list of them, as a list."""
    return paths if isinstance(paths, list) else [paths]


def read_manifests(paths: str | Path | list[str | Path]) -> list[Record]:
    """One manifest, or several read as one set (COCO + Flickr30K + TextCaps, say): an id may appear
    in only one of them, so a feature cache or a result never mixes two records up."""
    records: list[Record] = []
    seen: dict[str, Record] = {}
    for path in manifest_paths(paths):
        for record in read_manifest(path):
            if record.id in seen:
                raise ManifestError(f"{record.where()}: id {record.id!r} is also in {seen[record.id].where()}")
            seen[record.id] = record
            records.append(record)
    return records
