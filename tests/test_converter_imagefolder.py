"""The ImageFolder converter: one class per folder, with or without train/val/test split folders."""

from pathlib import Path

import pytest
from PIL import Image

from datamodules.converters import ConversionError, converter
from datamodules.converters.imagefolder import convert
from datamodules.manifest import read_manifest


def image(path: Path, fmt: str = "PNG") -> Path:
    """A real 2x2 image file at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (2, 2), (200, 30, 10)).save(path, format=fmt)
    return path


def text(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not an image")
    return path


def summary(out: Path) -> list[tuple[str, str, Path, str]]:
    """(id, split, resolved image path, label) of every record in the manifest."""
    return [(r.id, r.split, r.path("image").resolve(), r.fields["label"]) for r in read_manifest(out)]


def test_a_flat_tree_is_one_test_set_with_labels_from_folder_names(tmp_path):
    root = tmp_path / "pets"
    files = [
        image(root / "cat" / "a.jpg", "JPEG"),
        image(root / "cat" / "a.png"),  # same stem as a.jpg: ids keep the extension
        image(root / "golden_retriever" / "B.JPEG", "JPEG"),
        image(root / "golden_retriever" / "puppies" / "c.webp", "WEBP"),
    ]
    text(root / "cat" / "notes.txt")
    text(root / "README.md")
    image(root / "cat" / ".thumb.png")
    image(root / ".cache" / "cat" / "x.png")
    image(root / "cat" / ".hidden" / "y.png")
    out = tmp_path / "manifests" / "pets.jsonl"

    conversion = convert(root, out)

    assert summary(out) == [
        ("imagefolder/cat/a.jpg", "test", files[0].resolve(), "cat"),
        ("imagefolder/cat/a.png", "test", files[1].resolve(), "cat"),
        ("imagefolder/golden_retriever/B.JPEG", "test", files[2].resolve(), "golden retriever"),
        ("imagefolder/golden_retriever/puppies/c.webp", "test", files[3].resolve(), "golden retriever"),
    ]
    assert conversion.written == {"test": 4}
    assert conversion.skipped == {"not an image file": 1, "file outside a class folder": 1}
    assert converter("imagefolder").__wrapped__ is convert


def test_split_folders_are_kept_as_splits_in_train_val_test_order(tmp_path):
    root = tmp_path / "data"
    test_cat = image(root / "test" / "cat" / "t.png")
    train_dog = image(root / "train" / "dog" / "d.tiff", "TIFF")
    train_cat = image(root / "train" / "cat" / "c.bmp", "BMP")
    val_dog = image(root / "val" / "dog" / "v.gif", "GIF")
    out = tmp_path / "data.jsonl"

    conversion = convert(root, out)

    assert summary(out) == [
        ("imagefolder/train/cat/c.bmp", "train", train_cat.resolve(), "cat"),
        ("imagefolder/train/dog/d.tiff", "train", train_dog.resolve(), "dog"),
        ("imagefolder/val/dog/v.gif", "val", val_dog.resolve(), "dog"),
        ("imagefolder/test/cat/t.png", "test", test_cat.resolve(), "cat"),
    ]
    assert conversion.written == {"train": 2, "val": 1, "test": 1}


def test_a_split_name_beside_other_folders_is_a_class(tmp_path):
    root = tmp_path / "data"
    train = image(root / "train" / "x.png")
    cat = image(root / "cat" / "y.png")
    convert(root, tmp_path / "data.jsonl")
    assert summary(tmp_path / "data.jsonl") == [
        ("imagefolder/cat/y.png", "test", cat.resolve(), "cat"),
        ("imagefolder/train/x.png", "test", train.resolve(), "train"),
    ]


def test_a_broken_link_is_counted_as_a_missing_image(tmp_path):
    root = tmp_path / "data"
    kept = image(root / "cat" / "a.png")
    (root / "cat" / "gone.png").symlink_to(root / "cat" / "nowhere.png")
    conversion = convert(root, tmp_path / "data.jsonl")
    assert summary(tmp_path / "data.jsonl") == [("imagefolder/cat/a.png", "test", kept.resolve(), "cat")]
    assert conversion.skipped == {"image file missing": 1}


def test_missing_root_or_class_folders_or_images_explain_the_layout(tmp_path):
    out = tmp_path / "out.jsonl"
    with pytest.raises(ConversionError, match="expected the image folder's root at .*nowhere"):
        convert(tmp_path / "nowhere", out)
    root = tmp_path / "flat"
    image(root / "a.png")
    with pytest.raises(ConversionError, match=r"no class folders in .*flat: expected <root>/<class name>/<image"):
        convert(root, out)
    image(tmp_path / "split" / "train" / "cat" / "a.png")
    (tmp_path / "split" / "test").mkdir()
    with pytest.raises(ConversionError, match=r"no class folders in .*split/test"):
        convert(tmp_path / "split", out)
    text(tmp_path / "texts" / "cat" / "a.txt")
    with pytest.raises(ConversionError, match=r"found no record to write .*image files under .*texts"):
        convert(tmp_path / "texts", out)
    assert not out.exists()
