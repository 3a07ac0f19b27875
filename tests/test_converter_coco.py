"""COCO Captions, official and Karpathy forms, on fixtures in their exact on-disk layout."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from datamodules.converters import ConversionError, converter
from datamodules.manifest import read_manifest


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), "red").save(path)
    return path


def _official(root: Path, year: str = "2014") -> Path:
    """Two train images (one missing on disk), one val image with no caption, one with two."""
    split_images = {"train": [(9, True), (25, False)], "val": [(30, True), (42, True)]}
    captions = {9: ["A cat on a mat. ", "A small cat."], 25: ["A dog."], 42: ["Two men.", "  ", "Men talking."]}
    for split, images in split_images.items():
        entries = []
        for image_id, present in images:
            name = f"COCO_{split}{year}_{image_id:012d}.jpg"
            entries.append({"license": 1, "file_name": name, "height": 4, "width": 4, "id": image_id})
            if present:
                _image(root / f"{split}{year}" / name)
        annotations = [{"image_id": i, "id": 100 * i + n, "caption": c}
                       for i, _ in images for n, c in enumerate(captions.get(i, []))]
        index = root / "annotations" / f"captions_{split}{year}.json"
        index.parent.mkdir(parents=True, exist_ok=True)
        index.write_text(json.dumps({"info": {}, "licenses": [], "images": entries, "annotations": annotations}))
    return root


@pytest.mark.parametrize("year", ["2014", "2017"])
def test_official_captions_keep_train_and_val_and_skip_what_cannot_be_used(tmp_path, year):
    root = _official(tmp_path / "coco", year)
    out = tmp_path / "manifests" / "coco.jsonl"
    conversion = converter("coco")(root, out)
    records = read_manifest(out)
    assert [(r.id, r.split) for r in records] == [("coco/9", "train"), ("coco/42", "val")]
    assert records[0].fields["text"] == ["A cat on a mat.", "A small cat."]
    assert records[1].fields["text"] == ["Two men.", "Men talking."]
    assert records[0].path("image").resolve() == (root / f"train{year}/COCO_train{year}_000000000009.jpg").resolve()
    assert conversion.written == {"train": 1, "val": 1}
    assert conversion.skipped == {"image file missing": 1, "no caption": 1}


def test_karpathy_split_maps_restval_to_train_and_reads_images_by_filepath(tmp_path):
    root = tmp_path / "coco"
    entries = []
    for n, (folder, split) in enumerate([("train2014", "train"), ("val2014", "restval"), ("val2014", "val"),
                                         ("val2014", "test")]):
        name = f"COCO_{folder}_{n:012d}.jpg"
        _image(root / folder / name)
        entries.append({"filepath": folder, "sentids": [n], "filename": name, "imgid": n, "split": split,
                        "sentences": [{"tokens": ["a"], "raw": f"caption {n} ", "imgid": n, "sentid": n}],
                        "cocoid": 1000 + n})
    (root / "dataset_coco.json").write_text(json.dumps({"images": entries, "dataset": "coco"}))
    out = tmp_path / "karpathy.jsonl"
    conversion = converter("coco-karpathy")(root, out)
    records = read_manifest(out)
    assert [(r.id, r.split, r.fields["text"]) for r in records] == [
        ("coco/1000", "train", ["caption 0"]), ("coco/1001", "train", ["caption 1"]),
        ("coco/1002", "val", ["caption 2"]), ("coco/1003", "test", ["caption 3"]),
    ]
    assert records[1].path("image").resolve() == (root / "val2014/COCO_val2014_000000000001.jpg").resolve()
    assert conversion.written == {"train": 2, "val": 1, "test": 1} and not conversion.skipped


def test_missing_annotations_name_the_expected_file(tmp_path):
    (tmp_path / "coco").mkdir()
    with pytest.raises(ConversionError, match=r"annotations/captions_train2017\.json"):
        converter("coco")(tmp_path / "coco", tmp_path / "out.jsonl")
    with pytest.raises(ConversionError, match=r"dataset_coco\.json"):
        converter("coco-karpathy")(tmp_path / "coco", tmp_path / "out.jsonl")
    with pytest.raises(ConversionError, match="COCO's top folder"):
        converter("coco")(tmp_path / "nowhere", tmp_path / "out.jsonl")


def test_a_missing_key_or_bad_json_names_the_file(tmp_path):
    root = _official(tmp_path / "coco")
    index = root / "annotations/captions_val2014.json"
    data = json.loads(index.read_text())
    del data["annotations"][0]["caption"]
    index.write_text(json.dumps(data))
    with pytest.raises(ConversionError, match=r"captions_val2014\.json: missing key 'caption'"):
        converter("coco")(root, tmp_path / "out.jsonl")
    index.write_text("{not json")
    with pytest.raises(ConversionError, match=r"captions_val2014\.json: not valid JSON"):
        converter("coco")(root, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


def test_the_command_reports_counts_or_the_layout_error_without_a_traceback(tmp_path):
    root = _official(tmp_path / "coco")
    command = [sys.executable, "-m", "stages.cli", "data", "convert", "coco"]
    done = subprocess.run([*command, root, tmp_path / "coco.jsonl"], capture_output=True, text=True)
    assert done.returncode == 0 and "wrote 2 records" in done.stdout and "1 image file missing" in done.stdout
    failed = subprocess.run([*command, tmp_path / "nowhere", tmp_path / "x.jsonl"], capture_output=True, text=True)
    assert failed.returncode == 1 and "expected COCO's top folder" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_without_its_image_folders_nothing_is_written_and_the_folders_looked_in_are_named(tmp_path):
    root = _official(tmp_path / "coco", "2017")
    for split in ("train", "val"):
        shutil.rmtree(root / f"{split}2017")
    with pytest.raises(ConversionError, match=r"no record .*image file missing.*coco/train2017 and .*coco/val2017"):
        converter("coco")(root, tmp_path / "coco.jsonl")
    assert not (tmp_path / "coco.jsonl").exists()


def test_image_folders_doubled_by_their_archives_are_found(tmp_path):
    root = _official(tmp_path / "coco", "2017")
    for split in ("train", "val"):
        (root / f"{split}2017").rename(tmp_path / "moved")
        (root / f"{split}2017").mkdir()
        (tmp_path / "moved").rename(root / f"{split}2017" / f"{split}2017")
    conversion = converter("coco")(root, tmp_path / "coco.jsonl")
    assert conversion.written == {"train": 1, "val": 1}
