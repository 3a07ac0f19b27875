"""Manifests: malformed lines are errors naming `file:line`; media paths stay inside the manifest's
folder when the reader asks for containment."""

import json
import re

import pytest

from datamodules import ManifestDataModule
from datamodules.manifest import BadRecordError, ManifestError, UncontainedPathError, read_manifest, read_manifests


def _write(folder, *lines):
    path = folder / "manifest.jsonl"
    path.write_bytes(b"\n".join(line if isinstance(line, bytes) else json.dumps(line).encode() for line in lines))
    return path


GOOD = {"id": "a", "split": "train", "text": "a cat", "image": "a.png"}


def test_a_byte_that_is_not_utf8_names_the_line(tmp_path):
    path = _write(tmp_path, GOOD, b'{"id": "b", "split": "train", "text": "caf\xe9"}')
    with pytest.raises(ManifestError, match=rf"{path}:2: not UTF-8 \(byte 0xe9 at column 43\); re-encode"):
        read_manifest(path)


@pytest.mark.parametrize("value", [None, ["a.png", "b.png"], 3, ""])
def test_a_media_field_that_is_not_a_path_is_a_bad_record_naming_the_line(tmp_path, value):
    path = _write(tmp_path, GOOD, {"id": "b", "split": "train", "text": "a dog", "image": value})
    record = read_manifest(path)[1]
    expected = rf"{path}:2 \(id 'b'\): `image` must be a file path .*got {re.escape(json.dumps(value))}"
    with pytest.raises(BadRecordError, match=expected):
        record.check(("image", "text"))


def test_a_data_module_counts_a_record_whose_image_is_not_a_path_as_skipped(tmp_path):
    path = _write(tmp_path, GOOD, {"id": "b", "split": "train", "text": "a dog", "image": None})
    (tmp_path / "a.png").write_bytes(b"")
    data = ManifestDataModule(str(path), skip_bad_records=True, encoders={})
    assert data._usable_records() == (read_manifest(path)[:1], 1)


ESCAPES = ["../outside.png", "images/../../outside.png", "/etc/passwd"]


@pytest.mark.parametrize("media", ESCAPES)
def test_paths_outside_the_folder_are_read_by_default_and_refused_when_contained(tmp_path, media):
    folder = tmp_path / "data"
    folder.mkdir()
    path = _write(folder, GOOD, {"id": "b", "split": "test", "audio": media})
    assert read_manifest(path)[1].fields["audio"] == media  # trusted local data: converters write such paths
    with pytest.raises(UncontainedPathError, match=rf"{path}:2 \(id 'b'\): audio path .* leads outside"):
        read_manifests([path], contained=True)
    data = ManifestDataModule(str(path), modalities=("audio", "text"), contained_paths=True, encoders={})
    with pytest.raises(UncontainedPathError):
        data._usable_records()


def test_containment_follows_symbolic_links_and_keeps_paths_inside(tmp_path):
    folder = tmp_path / "data"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "link.png").symlink_to(tmp_path / "secret.png")
    inside = {"id": "b", "split": "test", "image": "images/./b.png"}
    assert len(read_manifest(_write(folder, GOOD, inside), contained=True)) == 2
    path = _write(folder, GOOD, {"id": "c", "split": "test", "image": "images/link.png"})
    with pytest.raises(UncontainedPathError, match="images/link.png"):
        read_manifest(path, contained=True)
