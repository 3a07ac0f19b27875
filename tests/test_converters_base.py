"""What every dataset converter shares: the registry, the report and the manifest writer."""

import json

import pytest

from datamodules.converters import (
    SOURCES,
    Conversion,
    ConversionError,
    converter,
    write_manifest,
)
from datamodules.converters.base import expect, relative
from datamodules.manifest import read_manifest


def test_unknown_source_lists_the_known_ones():
    with pytest.raises(ValueError, match="coco"):
        converter("cocoa")
    assert {"coco", "librispeech", "msrvtt", "cifar10", "esc50"} <= set(SOURCES)


def test_manifest_is_written_with_relative_paths_and_counted_per_split(tmp_path):
    image = tmp_path / "data" / "a.jpg"
    image.parent.mkdir()
    image.write_bytes(b"")
    out = tmp_path / "manifests" / "set.jsonl"
    records = [{"id": "a", "split": "train", "image": relative(image, out), "text": "a cat"},
               {"id": "b", "split": "test", "text": "ein Hund"}]
    conversion = write_manifest(out, records, Conversion(out))
    conversion.skipped["image file missing"] += 2
    assert [r.id for r in read_manifest(out)] == ["a", "b"]
    assert read_manifest(out)[0].path("image").resolve() == image.resolve()
    assert json.loads(out.read_text().splitlines()[1])["text"] == "ein Hund"
    assert conversion.summary() == f"wrote 2 records to {out} (test 1, train 1); skipped: 2 image file missing"
    assert not list(out.parent.glob(".*.tmp"))


def test_a_missing_file_is_named_with_what_it_should_be(tmp_path):
    with pytest.raises(ConversionError, match="expected the captions file at .*captions.json"):
        expect(tmp_path / "captions.json", "the captions file")


def test_a_converter_failing_part_way_leaves_no_manifest_and_no_temporary_file(tmp_path):
    def records():
        yield {"id": "a", "split": "train", "text": "a cat"}
        raise ConversionError("line 2 is malformed")

    out = tmp_path / "set.jsonl"
    with pytest.raises(ConversionError):
        write_manifest(out, records(), Conversion(out))
    assert list(tmp_path.iterdir()) == []
