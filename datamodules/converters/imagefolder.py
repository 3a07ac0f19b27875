"""A folder of images, one subfolder per class (torchvision's ImageFolder convention).

Layout: `<root>/<class name>/<image files>`, or with split folders `<root>/{train,val,test}/<class name>/
<image files>` (any of the three). The split form is used when the top-level folders are exactly some of
`train`, `val` and `test`; otherwise the whole tree is one set written as split `test`, since the use of an
ImageFolder here is zero-shot classification. As in torchvision, images may sit in subfolders of a class
folder. Image files end in .jpg .jpeg .png .bmp .gif .webp .tif or .tiff (any case); other files are
skipped and counted, hidden files and folders (name starting with `.`) are ignored.

A record is `imagefolder/<path relative to the root>` (unique, keeping the extension), with `label` = the
class folder's name with underscores as spaces (`golden_retriever` -> "golden retriever"), so that the
label reads as a prompt's class name. Records are sorted by split (train, val, test), then by id.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .base import Conversion, ConversionError, expect, relative, write_manifest

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
LAYOUT = "<root>/<class name>/<image files> or <root>/{train,val,test}/<class name>/<image files>"


def convert(root: Path, out: Path) -> Conversion:
    if not expect(root, "the image folder's root").is_dir():
        raise ConversionError(f"{root} is a file; expected a folder laid out as {LAYOUT}")
    top = _folders(root)
    splits = [s for s in SPLITS if s in top] if top and set(top) <= set(SPLITS) else []
    conversion = Conversion(out)
    records = []
    for split, folder in [(s, root / s) for s in splits] or [("test", root)]:
        records += _split_records(split, folder, root, out, conversion)
    looked_for = f"image files under {root} laid out as {LAYOUT} (extensions {sorted(IMAGE_EXTENSIONS)})"
    return write_manifest(out, records, conversion, looked_for)


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _folders(folder: Path) -> list[str]:
    """The non-hidden subfolders' names, sorted."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not _hidden(p.name))


def _split_records(split: str, folder: Path, root: Path, out: Path, conversion: Conversion) -> list[dict[str, Any]]:
    """Records for every image under `folder`'s class folders, sorted by id."""
    classes = _folders(folder)
    if not classes:
        raise ConversionError(f"no class folders in {folder}: expected {LAYOUT}")
    for path in folder.iterdir():
        if path.is_file() and not _hidden(path.name):
            conversion.skipped["file outside a class folder"] += 1
    records = []
    for name in classes:
        label = name.replace("_", " ")
        for image in _files(folder / name, conversion):
            records.append({"id": f"imagefolder/{image.relative_to(root).as_posix()}", "split": split,
                            "image": relative(image, out), "label": label})
    return sorted(records, key=lambda record: record["id"])


def _files(folder: Path, conversion: Conversion) -> list[Path]:
    """The image files under `folder`, at any depth (symlinks followed, like torchvision); other files
    are counted as skips."""
    images = []
    for parent, subfolders, names in os.walk(folder, followlinks=True):
        subfolders[:] = [name for name in subfolders if not _hidden(name)]
        for name in names:
            if _hidden(name):
                continue
            path = Path(parent) / name
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                conversion.skipped["not an image file"] += 1
            elif not path.is_file():  # a broken link
                conversion.skipped["image file missing"] += 1
            else:
                images.append(path)
    return images
