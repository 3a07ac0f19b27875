"""The manifest: JSON Lines (UTF-8), one record per line with `id`, `split` and any of `text`,
`image`, `audio`, `video` (paths relative to the manifest's folder) and `label`.

Media paths may be absolute or lead out of the manifest's folder (`../coco/...`): converters write
them so on purpose, and local data is trusted. Where a manifest comes from someone else (an upload,
a web request), read it with `contained=True`: a path outside its folder is then an
UncontainedPathError.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPLITS = ("train", "val", "test")
MEDIA_FIELDS = ("image", "audio", "video")


class ManifestError(ValueError):
    """The manifest itself is malformed (bad JSON, missing or duplicate id, unknown split)."""


class UncontainedPathError(ManifestError):
    """A media path leads outside the manifest's folder where the reader asked for containment."""


class BadRecordError(ValueError):
    """One record cannot be used: a missing or undecodable file, an empty caption, a media field
    that is not a path."""


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
        value = self.fields[modality]
        if not isinstance(value, str) or not value:
            raise BadRecordError(
                f"{self.where()}: `{modality}` must be a file path (a non-empty string), got {json.dumps(value)};"
                f" leave the field out when the record has no {modality}"
            )
        return self.manifest.parent / value

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


def read_manifest(path: str | Path, contained: bool = False) -> list[Record]:
    """The manifest's records; with `contained`, every media path must stay inside its folder."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} not found (expected a JSON Lines file, one record per line)")
    records: list[Record] = []
    seen: dict[str, int] = {}
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            data = _parse_line(path, number, raw)
            if data["id"] in seen:
                raise ManifestError(f"{path}:{number}: id {data['id']!r} already used on line {seen[data['id']]}")
            seen[data["id"]] = number
            fields = {k: v for k, v in data.items() if k not in ("id", "split")}
            record = Record(path, number, data["id"], data["split"], fields)
            if contained:
                _check_contained(record)
            records.append(record)
    return records


def _parse_line(path: Path, number: int, raw: bytes) -> dict[str, Any]:
    """One line -> its record as a dict with a valid `id` and `split`."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ManifestError(
            f"{path}:{number}: not UTF-8 (byte 0x{raw[error.start]:02x} at column {error.start + 1});"
            " re-encode the manifest as UTF-8"
        ) from None
    try:
        data = json.loads(line)
    except json.JSONDecodeError as error:
        raise ManifestError(f"{path}:{number}: not valid JSON ({error.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("id"), str) or not data["id"]:
        raise ManifestError(f"{path}:{number}: each record needs a non-empty string `id`")
    if data.get("split") not in SPLITS:
        raise ManifestError(f"{path}:{number}: `split` must be one of {SPLITS} (got {data.get('split')!r})")
    return data


def _check_contained(record: Record) -> None:
    """Refuse media paths that are absolute or lead, after `..` and symbolic links, out of the
    manifest's folder. A field that is no path at all is left to `Record.path` (a bad record)."""
    folder = record.manifest.parent.resolve()
    for modality in MEDIA_FIELDS:
        value = record.fields.get(modality)
        if not isinstance(value, str) or not value:
            continue
        if Path(value).is_absolute() or not (folder / value).resolve().is_relative_to(folder):
            raise UncontainedPathError(
                f"{record.where()}: {modality} path {value!r} leads outside the manifest's folder {folder};"
                " this reader takes only paths inside it. Copy the file into that folder, or read the"
                " manifest without containment if it is trusted local data"
            )


def manifest_paths(paths: str | Path | list[str | Path]) -> list[str | Path]:
    """A `manifest` setting, one path or a list of them, as a list."""
    return paths if isinstance(paths, list) else [paths]


def read_manifests(paths: str | Path | list[str | Path], contained: bool = False) -> list[Record]:
    """One manifest, or several read as one set (COCO + Flickr30K + TextCaps, say): an id may appear
    in only one of them, so a feature cache or a result never mixes two records up."""
    records: list[Record] = []
    seen: dict[str, Record] = {}
    for path in manifest_paths(paths):
        for record in read_manifest(path, contained):
            if record.id in seen:
                raise ManifestError(f"{record.where()}: id {record.id!r} is also in {seen[record.id].where()}")
            seen[record.id] = record
            records.append(record)
    return records
