"""TextCaps (textvqa.org/textcaps): captions that read the text in TextVQA's Open Images photos.

Expected layout (the captions JSONs and TextVQA's image download side by side):

    <root>/TextCaps_0.1_train.json     {"data": [{"image_id", "caption_str", ...}]}, one entry per caption
    <root>/TextCaps_0.1_val.json       same form (either file may be absent, not both)
    <root>/train_images/<image_id>.jpg TextVQA's train_images/, which holds both train and val images
                                       (`train_images/train_images/` is accepted too)

Splits: the train JSON -> train, the val JSON -> val. The test JSON has no captions and is not read, so
there is no test split (val is the split TextCaps results are reported on without the eval server).
One record per image, `textcaps/<image_id>`, with its distinct captions in first-seen order; records in
the order of each image's first entry, train file then val file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import Conversion, ConversionError, captioned_image, expect, load_json, nested, require, write_manifest

FILES = {"train": "TextCaps_0.1_train.json", "val": "TextCaps_0.1_val.json"}


def convert(root: Path, out: Path) -> Conversion:
    """Write the manifest of TextCaps' captioned splits (train and val, whichever JSONs are present)."""
    present = {split: root / name for split, name in FILES.items() if (root / name).is_file()}
    if not present:
        raise ConversionError(
            f"expected TextCaps' captions at {root / FILES['train']} or {root / FILES['val']}, found neither:"
            " is the root the folder holding the TextCaps JSONs and train_images/?"
        )
    expect(root / "train_images", "TextVQA's image folder train_images/")
    images = nested(root, "train_images")
    conversion = Conversion(out)
    records = []
    for split, index in present.items():
        records += _split_records(index, split, images, out, conversion)
    return write_manifest(out, records, conversion, f"<image_id>.jpg in {images}")


def _split_records(index: Path, split: str, images: Path, out: Path, conversion: Conversion) -> list[dict[str, Any]]:
    """One record per image of a split file, gathering the image's caption entries."""
    captions: dict[str, list[str]] = {}
    for entry in require(load_json(index, f"TextCaps' {split} captions"), "data", index):
        captions.setdefault(require(entry, "image_id", index), []).append(require(entry, "caption_str", index))
    records = []
    for image_id, texts in captions.items():
        record = captioned_image(f"textcaps/{image_id}", split, images / f"{image_id}.jpg",
                                 list(dict.fromkeys(texts)), out, conversion)
        if record is not None:
            records.append(record)
    return records
