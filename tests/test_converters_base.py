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
from datamodules.converters.base import expect, nested, read_text, relative, top_folder
from datamodules.manifest import read_manifest


def test_unknown_source_lists_the_known_ones():
    with pytest.raises(ConversionError, match="unknown source 'cocoa'; sources: .*'coco'"):
        converter("cocoa")
    assert {"coco", "librispeech", "msrvtt", "cifar10", "esc50"} <= set(SOURCES)


def test_manifest_is_written_with_relative_paths_and_counted_per_split(tmp_path):
    image = tmp_path / "data" / "a.jpg"
    image.parent.mkdir()
    image.write_bytes(b"")
    out = tmp_path / "manifests" / "set.jsonl"
    records = [{"id": "a", "split": "train", "image": relative(image, out), "text": "a cat"},
               {"id": "b", "split": "test", "text": "ein Hund"}]
    conversion = write_manifest(out, records, Conversion(out), "nowhere in particular")
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
        write_manifest(out, records(), Conversion(out), "nowhere in particular")
    assert list(tmp_path.iterdir()) == []


def test_no_record_to_write_is_an_error_naming_the_skips_and_where_media_were_looked_for(tmp_path):
    out = tmp_path / "set.jsonl"
    out.write_text('{"id": "old", "split": "test", "text": "kept"}\n')
    conversion = Conversion(out)
    conversion.skipped["image file missing"] += 3
    with pytest.raises(ConversionError, match=r"no record .*3 image file missing.*looked for the images in /x/train2017"):
        write_manifest(out, iter([]), conversion, "the images in /x/train2017")
    assert [r.id for r in read_manifest(out)] == ["old"]  # an earlier manifest is left as it was
    assert [p.name for p in tmp_path.iterdir()] == ["set.jsonl"]


def test_an_output_path_that_is_a_folder_is_refused_before_the_dataset_is_read(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(ConversionError, match=r"out is a folder; give the manifest's file name, e.g. .*out/manifest"):
        converter("esc50")(tmp_path / "no-such-dataset", tmp_path / "out")
    (tmp_path / "file").write_text("")
    with pytest.raises(ConversionError, match=r"file is a file, so .*file/sub/set.jsonl cannot be written"):
        converter("esc50")(tmp_path / "no-such-dataset", tmp_path / "file" / "sub" / "set.jsonl")


def test_archives_extracted_into_a_folder_of_their_own_name_are_found(tmp_path):
    assert nested(tmp_path, "images") == tmp_path / "images"
    (tmp_path / "images" / "images").mkdir(parents=True)
    assert nested(tmp_path, "images") == tmp_path / "images" / "images"
    (tmp_path / "ESC-50-master" / "meta").mkdir(parents=True)
    assert top_folder(tmp_path, ["meta"], "ESC-50-master") == tmp_path / "ESC-50-master"
    assert top_folder(tmp_path / "ESC-50-master", ["meta"], "ESC-50-master") == tmp_path / "ESC-50-master"


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "results.csv"
    path.write_bytes("image_name| comment_number| comment\ncaf\u00e9".encode("latin-1"))
    with pytest.raises(ConversionError, match=r"results.csv: not UTF-8 text .*re-encode it as UTF-8"):
        read_text(path, "captions")
    path.write_bytes(b"\xef\xbb\xbfwith a byte-order mark")
    assert read_text(path, "captions") == "with a byte-order mark"
