"""Flickr30K (shannon.cs.illinois.edu/DenotationGraph): 31,783 Flickr photos with 5 captions each, in
either of its two common downloads.

Karpathy's split (`convert`, source `flickr30k`), from his neuraltalk data:

    <root>/dataset_flickr30k.json          {"images": [{"filename", "split", "sentences": [{"raw"}]}]}
    <root>/flickr30k-images/<filename>     (`flickr30k_images/` is accepted too, and either doubled:
                                            `flickr30k-images/flickr30k-images/`, as common archives hold it)

Its train/val/test are kept (`restval`, if present, joins train): they are the splits every published
Flickr30K retrieval result uses, with a 1,000-image test set.

The Kaggle "flickr30k_images" download (`convert_results_csv`, source `flickr30k-csv`), the form
OneEncoder's original code reads:

    <root>/results.csv                     header `image_name| comment_number| comment`, one caption a line
    <root>/flickr30k_images/<image_name>   (`flickr30k-images/` is accepted too)

The root may also be the folder the download was extracted into, holding `flickr30k_images/` (which then
holds results.csv and the images in another `flickr30k_images/`).

Lines without three fields, a numeric comment number and a comment (the real file has such) are skipped
as "malformed line". This form has no splits, so they are drawn deterministically, from the names alone:
the image names are sorted by the sha1 hex digest of the name; the first n go to test, the next n to
val, the rest to train, with n = max(1, round(names * 1000 / 31783)) for the names on well-formed lines:
1,000 each for the full set, the size of Karpathy's test and val, whichever image files are on disk.

Either way a record is one image with its captions, `flickr30k/<filename stem>`, in the index file's
order (for results.csv: the order of each image's first line, captions in comment_number order).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .base import Conversion, ConversionError, captioned_image, expect, nested, read_text, top_folder, write_manifest
from .coco import karpathy_records

IMAGE_FOLDERS = ("flickr30k-images", "flickr30k_images")
HEADER = ["image_name", "comment_number", "comment"]
FLICKR30K_IMAGES = 31783
HELD_OUT_IMAGES = 1000  # per held-out split of the full set, as in Karpathy's test and val


def convert(root: Path, out: Path) -> Conversion:
    """Write the manifest of Karpathy's split of Flickr30K."""
    index = expect(root / "dataset_flickr30k.json", "Karpathy's split file dataset_flickr30k.json")
    images = _images(root)
    conversion = Conversion(out)
    records = karpathy_records(index, images, out, "flickr30k", conversion)
    return write_manifest(out, records, conversion, f"the images named in {index.name} in {images}")


def convert_results_csv(root: Path, out: Path) -> Conversion:
    """Write the manifest of the Kaggle download (`results.csv`), with splits drawn by `held_out_splits`."""
    root = top_folder(root, ["results.csv"], IMAGE_FOLDERS[1])
    index = expect(root / "results.csv", "the Kaggle download's caption file results.csv")
    images = _images(root)
    conversion = Conversion(out)
    captions = _numbered_captions(index, conversion)
    splits = held_out_splits(list(captions))
    records = []
    for name, numbered in captions.items():
        texts = [comment for _, comment in sorted(numbered, key=lambda pair: pair[0])]
        record = captioned_image(f"flickr30k/{Path(name).stem}", splits[name], images / name, texts, out, conversion)
        if record is not None:
            records.append(record)
    return write_manifest(out, records, conversion, f"the images named in {index.name} in {images}")


def held_out_splits(names: list[str]) -> dict[str, str]:
    """Split of each image name: test for the first n in sha1 order of the names, val for the next n, train
    for the rest, n = max(1, round(len(names) * 1000 / 31783)); a fixed rule, so every run agrees."""
    ordered = sorted(names, key=lambda name: hashlib.sha1(name.encode("utf-8")).hexdigest())
    n = max(1, round(len(names) * HELD_OUT_IMAGES / FLICKR30K_IMAGES))
    return {name: "test" if i < n else "val" if i < 2 * n else "train" for i, name in enumerate(ordered)}


def _numbered_captions(index: Path, conversion: Conversion) -> dict[str, list[tuple[int, str]]]:
    """image name -> (comment_number, comment) pairs, in the file's order; malformed lines are counted."""
    captions: dict[str, list[tuple[int, str]]] = {}
    header, *lines = read_text(index, "the Kaggle download's caption file results.csv").split("\n")
    if [field.strip() for field in header.split("|")] != HEADER:
        raise ConversionError(
            f"{index}: header is {header.strip()!r}, expected 'image_name| comment_number| comment'"
            " (the results.csv of Kaggle's flickr30k_images download)"
        )
    for line in lines:
        if not line.strip():
            continue
        fields = [field.strip() for field in line.split("|", 2)]
        if len(fields) < 3 or not fields[0] or not fields[1].isdigit() or not fields[2]:
            conversion.skipped["malformed line"] += 1
            continue
        captions.setdefault(fields[0], []).append((int(fields[1]), fields[2]))
    return captions


def _images(root: Path) -> Path:
    """The image folder, under either of the names the downloads use, possibly doubled."""
    for name in IMAGE_FOLDERS:
        if (root / name).is_dir():
            return nested(root, name)
    raise ConversionError(
        f"expected Flickr30K's images in {root / IMAGE_FOLDERS[0]} (or {root / IMAGE_FOLDERS[1]}), found neither"
    )

