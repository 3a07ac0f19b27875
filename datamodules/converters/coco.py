"""COCO Captions, in its official form or in Karpathy's split.

Official form (cocodataset.org): `<root>/annotations/captions_{train,val}<year>.json` (year 2017, else
2014: the newest present is read) with the images in `<root>/{train,val}<year>/<file_name>` (or
`<root>/train<year>/train<year>/...`, as some mirrors' archives extract). Its splits are kept: train -> train, val -> val (COCO has no captioned test set).

Karpathy's split (`dataset_coco.json`, from his neuraltalk2 data): `<root>/dataset_coco.json` with the
2014 images in `<root>/<filepath>/<filename>` (`train2014/`, `val2014/`, each possibly doubled). Its train/val/test (5,000 each
for val and test) are kept, and `restval` joins train, as every paper using this split does; these are
the splits image-text retrieval results are reported on.

Either way a record is one image with all its captions, `coco/<image id>`, in the index file's order;
finding no image at all is an error naming the folders looked in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import Conversion, ConversionError, captioned_image, expect, load_json, nested, require, write_manifest

YEARS = ("2017", "2014")
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}


def karpathy_records(index: Path, images: Path, out: Path, source: str, conversion: Conversion) -> list[dict[str, Any]]:
    """Records from one of Karpathy's split files (`dataset_coco.json`, `dataset_flickr30k.json`):
    images under `images` (joined with an entry's `filepath` where it has one)."""
    data = load_json(index, f"Karpathy's split file {index.name}")
    records = []
    for entry in require(data, "images", index):
        filename = require(entry, "filename", index)
        split = require(entry, "split", index)
        if split not in KARPATHY_SPLITS:
            raise ConversionError(f"{index}: unknown split {split!r} for {filename} (expected {sorted(KARPATHY_SPLITS)})")
        captions = [require(sentence, "raw", index) for sentence in require(entry, "sentences", index)]
        image_id = entry.get("cocoid", Path(filename).stem)
        record = captioned_image(f"{source}/{image_id}", KARPATHY_SPLITS[split],
                                 nested(images, entry.get("filepath", "")) / filename, captions, out, conversion)
        if record is not None:
            records.append(record)
    return records


def convert(root: Path, out: Path) -> Conversion:
    annotations = expect(root, "COCO's top folder") / "annotations"
    year = next((y for y in YEARS if (annotations / f"captions_train{y}.json").is_file()), None)
    if year is None:
        raise ConversionError(
            f"expected {annotations}/captions_train2017.json (or captions_train2014.json), found neither:"
            " is the root the folder that holds annotations/ and the image folders?"
        )
    conversion = Conversion(out)
    records = []
    folders = {split: nested(root, f"{split}{year}") for split in ("train", "val")}
    for split, images in folders.items():
        records += _official_split(annotations / f"captions_{split}{year}.json", images, split, out, conversion)
    looked_for = f"the images listed in captions_{{train,val}}{year}.json in {' and '.join(map(str, folders.values()))}"
    return write_manifest(out, records, conversion, looked_for)


def _official_split(index: Path, images: Path, split: str, out: Path, conversion: Conversion) -> list[dict[str, Any]]:
    data = load_json(index, f"COCO's {split} captions")
    captions: dict[int, list[str]] = {}
    for annotation in require(data, "annotations", index):
        captions.setdefault(require(annotation, "image_id", index), []).append(require(annotation, "caption", index))
    records = []
    for image in require(data, "images", index):
        image_id = require(image, "id", index)
        record = captioned_image(f"coco/{image_id}", split, images / require(image, "file_name", index),
                                 captions.get(image_id, []), out, conversion)
        if record is not None:
            records.append(record)
    return records


def convert_karpathy(root: Path, out: Path) -> Conversion:
    conversion = Conversion(out)
    records = karpathy_records(expect(root, "COCO's top folder") / "dataset_coco.json", root, out, "coco", conversion)
    return write_manifest(out, records, conversion, f"the images in {root}/<filepath>/<filename> (train2014/, val2014/)")
