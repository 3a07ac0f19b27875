"""CIFAR-10, binary version (`cifar-10-binary.tar.gz` from https://www.cs.toronto.edu/~kriz/cifar.html,
extracted).

Layout: `<root>` is the `cifar-10-batches-bin/` folder, or its parent holding it. All of
`data_batch_1.bin` ... `data_batch_5.bin`, `test_batch.bin` and `batches.meta.txt` (the 10 class names,
one per line) are required. Each .bin holds 10,000 records of 3073 bytes: a label byte (0-9), then the
1024 red, 1024 green and 1024 blue values of a 32x32 image, row-major; a file with fewer (a download cut
short at a record boundary) is refused. The official splits are kept: the five data
batches -> train (indices 0-49999 in batch order), test_batch -> test (0-9999); CIFAR-10 has no val set.

The manifest needs image files, so every image is written as `<manifest folder>/cifar10/<split>/<index:05d>.png`;
a PNG already there with the same bytes is left alone, so a rerun rewrites nothing. Records are
`cifar10/<split>/<index:05d>` with `label` = the class name, train then test, in index order.

The pickled python version (`cifar-10-batches-py/`) is refused: unpickling a downloaded file runs
whatever code it holds.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .base import Conversion, ConversionError, expect, read_text, relative, write_manifest

BINARY = "cifar-10-batches-bin"
RECORD_BYTES = 1 + 3 * 32 * 32
RECORDS_PER_BATCH = 10_000
SPLIT_FILES = {"train": [f"data_batch_{n}.bin" for n in range(1, 6)], "test": ["test_batch.bin"]}
DOWNLOAD = "the binary version cifar-10-binary.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html"


def convert(root: Path, out: Path) -> Conversion:
    folder = _binary_folder(expect(root, f"CIFAR-10's {BINARY}/ folder"))
    names = _class_names(expect(folder / "batches.meta.txt", f"CIFAR-10's class names (root: {BINARY}/ or its parent)"))
    batches = {split: [_read_batch(expect(folder / name, f"CIFAR-10's batch file {name}")) for name in files]
               for split, files in SPLIT_FILES.items()}  # all read and checked before any PNG is written
    records = []
    for split, split_batches in batches.items():
        records += _split_records(split, split_batches, names, out)
    return write_manifest(out, records, Conversion(out), f"the batch files in {folder}")


def _binary_folder(root: Path) -> Path:
    """The folder holding the .bin files: `root` or its `cifar-10-batches-bin/`; the pickled version is
    refused with a pointer to the binary one."""
    folder = root / BINARY if (root / BINARY).is_dir() else root
    if not (folder / SPLIT_FILES["train"][0]).exists():
        pickled = next((p for p in (root / "cifar-10-batches-py", root / "batches.meta", root / "data_batch_1")
                        if p.exists()), None)
        if pickled is not None:
            raise ConversionError(
                f"found CIFAR-10's pickled python version at {pickled}: it is not read, since unpickling a"
                f" downloaded file runs arbitrary code; expected {DOWNLOAD}, extracted (its {BINARY}/ folder)"
            )
    return folder


def _class_names(meta: Path) -> list[str]:
    """The 10 class names, one per line (trailing empty lines ignored)."""
    names = [line.strip() for line in read_text(meta, "CIFAR-10's class names").split("\n") if line.strip()]
    if len(names) != 10:
        raise ConversionError(f"{meta}: expected 10 class names, one per line, found {len(names)}")
    return names


def _split_records(
    split: str, batches: list[tuple[np.ndarray, np.ndarray]], names: list[str], out: Path
) -> list[dict[str, Any]]:
    """One split's records, writing its images as PNGs numbered across the split's batches in order."""
    images = out.parent / "cifar10" / split
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for labels, pixels in tqdm(batches, desc=f"CIFAR-10 {split} images", unit="batch file"):
        for label, array in zip(labels, pixels):
            index = len(records)
            path = images / f"{index:05d}.png"
            _write_png(path, array)
            records.append({"id": f"cifar10/{split}/{index:05d}", "split": split, "image": relative(path, out),
                            "label": names[label]})
    return records


def _read_batch(batch: Path) -> tuple[np.ndarray, np.ndarray]:
    """Labels (n,) and images (n, 32, 32, 3) RGB from one .bin file, checked for size and label range."""
    data = np.fromfile(batch, dtype=np.uint8)
    if data.size == 0 or data.size % RECORD_BYTES:
        raise ConversionError(
            f"{batch}: {data.size} bytes is not a whole number of {RECORD_BYTES}-byte records"
            f" (is it from {DOWNLOAD}?)"
        )
    if data.size != RECORDS_PER_BATCH * RECORD_BYTES:
        raise ConversionError(
            f"{batch}: {data.size // RECORD_BYTES} records, expected {RECORDS_PER_BATCH:,} ({RECORDS_PER_BATCH * RECORD_BYTES:,}"
            f" bytes): the file is cut short or not CIFAR-10's; extract {DOWNLOAD} again"
        )
    data = data.reshape(-1, RECORD_BYTES)
    labels = data[:, 0]
    if labels.max() > 9:
        bad = int(np.argmax(labels > 9))
        raise ConversionError(f"{batch}: record {bad} has label byte {labels[bad]}, expected 0-9")
    return labels, data[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def _write_png(path: Path, array: np.ndarray) -> None:
    """Write the image as PNG unless the same bytes are already there."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    png = buffer.getvalue()
    if not path.is_file() or path.stat().st_size != len(png) or path.read_bytes() != png:
        path.write_bytes(png)
