"""TextCaps: the train/val caption JSONs and TextVQA's train_images/ folder, in their real form."""

import json
from pathlib import Path

import pytest
from PIL import Image

from datamodules.converters import ConversionError, converter
from datamodules.manifest import read_manifest


def entry(image_id: str, set_name: str, caption_id: int, caption: str) -> dict:
    return {"image_id": image_id, "image_classes": ["Poster"], "flickr_original_url": "https://farm.example/o.jpg",
            "flickr_300k_url": "https://farm.example/300k.jpg", "image_width": 1024, "image_height": 664,
            "set_name": set_name, "image_name": image_id, "image_path": f"train/{image_id}.jpg",
            "caption_id": caption_id, "caption_str": caption, "caption_tokens": caption.lower().split(),
            "reference_strs": [caption], "reference_tokens": [caption.lower().split()]}


def write_split(root: Path, split: str, entries: list[dict]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    data = {"dataset_type": split, "dataset_name": "textcaps", "dataset_version": "0.1", "data": entries}
    (root / f"TextCaps_0.1_{split}.json").write_text(json.dumps(data))


def write_jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (10, 200, 10)).save(path, format="JPEG")
    return path


def test_one_record_per_image_with_distinct_captions(tmp_path):
    root = tmp_path / "textcaps"
    write_split(root, "train", [
        entry("011e7e629fb9ae7b", "train", 1, "A poster for a movie called Hello."),
        entry("0a0bc91825468c45", "train", 2, "A red stop sign."),
        entry("011e7e629fb9ae7b", "train", 3, "A poster that says Hello in blue."),
        entry("011e7e629fb9ae7b", "train", 4, "A poster for a movie called Hello."),
        entry("ffff000011112222", "train", 5, "A bottle of wine."),  # no image file
    ])
    write_split(root, "val", [entry("003a8ae2ef43b901", "val", 6, "A clock that reads 10:10.")])
    write_split(root, "test", [])  # no captions: never read
    files = {i: write_jpeg(root / "train_images" / f"{i}.jpg")
             for i in ("011e7e629fb9ae7b", "0a0bc91825468c45", "003a8ae2ef43b901")}
    out = tmp_path / "manifests" / "textcaps.jsonl"
    conversion = converter("textcaps")(root, out)
    records = read_manifest(out)
    assert [(r.id, r.split, r.fields["text"]) for r in records] == [
        ("textcaps/011e7e629fb9ae7b", "train",
         ["A poster for a movie called Hello.", "A poster that says Hello in blue."]),
        ("textcaps/0a0bc91825468c45", "train", ["A red stop sign."]),
        ("textcaps/003a8ae2ef43b901", "val", ["A clock that reads 10:10."]),
    ]
    for record in records:
        assert record.path("image").resolve() == files[record.id.split("/")[1]].resolve()
    assert conversion.written == {"train": 2, "val": 1}
    assert conversion.skipped == {"image file missing": 1}


def test_val_alone_is_enough(tmp_path):
    write_split(tmp_path, "val", [entry("003a8ae2ef43b901", "val", 1, "A clock.")])
    write_jpeg(tmp_path / "train_images" / "003a8ae2ef43b901.jpg")
    conversion = converter("textcaps")(tmp_path, tmp_path / "out.jsonl")
    assert conversion.written == {"val": 1}


def test_errors_name_the_file_and_key(tmp_path):
    with pytest.raises(ConversionError, match="TextCaps_0.1_train.json"):
        converter("textcaps")(tmp_path / "absent", tmp_path / "out.jsonl")
    broken = entry("011e7e629fb9ae7b", "train", 1, "A poster.")
    del broken["caption_str"]
    write_split(tmp_path, "train", [broken])
    with pytest.raises(ConversionError, match="train_images"):
        converter("textcaps")(tmp_path, tmp_path / "out.jsonl")
    (tmp_path / "train_images").mkdir()
    with pytest.raises(ConversionError, match="TextCaps_0.1_train.json.*'caption_str'"):
        converter("textcaps")(tmp_path, tmp_path / "out.jsonl")
    (tmp_path / "TextCaps_0.1_train.json").write_text("{not json")
    with pytest.raises(ConversionError, match="TextCaps_0.1_train.json: not valid JSON"):
        converter("textcaps")(tmp_path, tmp_path / "out.jsonl")


def test_a_doubled_image_folder_is_found_and_no_image_at_all_is_an_error(tmp_path):
    write_split(tmp_path, "val", [entry("003a8ae2ef43b901", "val", 6, "A clock that reads 10:10.")])
    (tmp_path / "train_images").mkdir()
    with pytest.raises(ConversionError, match=r"no record .*1 image file missing.*<image_id>.jpg in .*train_images"):
        converter("textcaps")(tmp_path, tmp_path / "out.jsonl")
    image = write_jpeg(tmp_path / "train_images" / "train_images" / "003a8ae2ef43b901.jpg")
    converter("textcaps")(tmp_path, tmp_path / "out.jsonl")
    assert read_manifest(tmp_path / "out.jsonl")[0].path("image").resolve() == image.resolve()
