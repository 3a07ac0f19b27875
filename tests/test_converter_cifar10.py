"""The CIFAR-10 converter reads the binary version's .bin files, writes each image as a PNG and refuses
the pickled version."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules.converters import ConversionError, cifar10, converter
from datamodules.converters.cifar10 import convert
from datamodules.manifest import read_manifest

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
BATCHES = [f"data_batch_{n}.bin" for n in range(1, 6)] + ["test_batch.bin"]
PER_BATCH = 2  # records per fixture batch file; the real ones hold 10,000


@pytest.fixture(autouse=True)
def small_batches(monkeypatch):
    monkeypatch.setattr(cifar10, "RECORDS_PER_BATCH", PER_BATCH)


def record_bytes(label: int, image: np.ndarray) -> bytes:
    """One record as the .bin files hold it: label byte, then the red, green and blue planes, row-major."""
    return bytes([label]) + b"".join(image[:, :, channel].tobytes() for channel in range(3))


def write_cifar(parent: Path, per_batch: int = PER_BATCH) -> dict[str, list[tuple[int, np.ndarray]]]:
    """`parent/cifar-10-batches-bin/` with all six batches of `per_batch` random images; returns them
    per file."""
    folder = parent / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    (folder / "batches.meta.txt").write_text("\n".join(CLASSES) + "\n\n\n")
    rng = np.random.default_rng(0)
    written = {}
    for number, name in enumerate(BATCHES):
        images = [(int((number + i) % 10), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for i in range(per_batch)]
        (folder / name).write_bytes(b"".join(record_bytes(label, image) for label, image in images))
        written[name] = images
    return written


def test_records_and_pngs_keep_the_labels_pixels_and_channel_order(tmp_path):
    written = write_cifar(tmp_path / "cifar")
    red = np.zeros((32, 32, 3), dtype=np.uint8)
    red[0, 1, 0] = 255  # one red pixel at row 0, column 1
    test_batch = tmp_path / "cifar" / "cifar-10-batches-bin" / "test_batch.bin"
    test_batch.write_bytes(test_batch.read_bytes()[:cifar10.RECORD_BYTES] + record_bytes(9, red))
    out = tmp_path / "manifests" / "cifar10.jsonl"

    conversion = convert(tmp_path / "cifar", out)

    records = read_manifest(out)
    expected = [("train", image) for name in BATCHES[:5] for image in written[name]]
    expected += [("test", image) for image in written["test_batch.bin"][:1] + [(9, red)]]
    assert [(r.id, r.split) for r in records] == (
        [(f"cifar10/train/{i:05d}", "train") for i in range(10)] + [(f"cifar10/test/{i:05d}", "test") for i in range(2)]
    )
    for record, (split, (label, image)) in zip(records, expected):
        assert record.fields["label"] == CLASSES[label]
        assert record.path("image").resolve() == (out.parent / "cifar10" / split / f"{record.id[-5:]}.png").resolve()
        png = Image.open(record.path("image"))
        assert png.mode == "RGB" and png.size == (32, 32)
        assert np.array_equal(np.asarray(png), image)
    assert tuple(np.asarray(Image.open(records[-1].path("image")))[0, 1]) == (255, 0, 0)
    assert conversion.written == {"train": 10, "test": 2}
    assert not conversion.skipped
    assert converter("cifar10").__wrapped__ is convert


def test_the_batches_folder_itself_is_a_root_and_a_rerun_rewrites_only_changed_pngs(tmp_path):
    write_cifar(tmp_path)
    out = tmp_path / "out" / "cifar10.jsonl"
    convert(tmp_path / "cifar-10-batches-bin", out)
    kept, spoiled = out.parent / "cifar10" / "train" / "00000.png", out.parent / "cifar10" / "test" / "00001.png"
    os.utime(kept, ns=(10**9, 10**9))
    original = spoiled.read_bytes()
    spoiled.write_bytes(b"not a png")

    conversion = convert(tmp_path / "cifar-10-batches-bin", out)

    assert kept.stat().st_mtime_ns == 10**9
    assert spoiled.read_bytes() == original
    assert conversion.written == {"train": 10, "test": 2}


@pytest.mark.parametrize("layout", ["parent", "root"])
def test_the_pickled_version_is_refused_with_a_pointer_to_the_binary_one(tmp_path, layout):
    pickled = tmp_path / "cifar-10-batches-py"
    pickled.mkdir()
    for name in ("batches.meta", "data_batch_1", "test_batch"):
        (pickled / name).write_bytes(b"\x80\x04not unpickled")
    root = tmp_path if layout == "parent" else pickled
    with pytest.raises(ConversionError, match=r"pickled .*arbitrary code.*cifar-10-binary\.tar\.gz.*toronto"):
        convert(root, tmp_path / "out.jsonl")


def test_missing_root_meta_or_batch_is_named(tmp_path):
    with pytest.raises(ConversionError, match="nowhere"):
        convert(tmp_path / "nowhere", tmp_path / "out.jsonl")
    write_cifar(tmp_path)
    folder = tmp_path / "cifar-10-batches-bin"
    (folder / "data_batch_3.bin").unlink()
    with pytest.raises(ConversionError, match="data_batch_3.bin"):
        convert(tmp_path, tmp_path / "out.jsonl")
    (folder / "batches.meta.txt").unlink()
    with pytest.raises(ConversionError, match="batches.meta.txt"):
        convert(tmp_path, tmp_path / "out.jsonl")


def test_wrong_class_count_is_named(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-bin" / "batches.meta.txt").write_text("\n".join(CLASSES[:9]) + "\n")
    with pytest.raises(ConversionError, match="batches.meta.txt: expected 10 class names.*found 9"):
        convert(tmp_path, tmp_path / "out.jsonl")


def test_a_truncated_batch_or_bad_label_byte_is_named_and_nothing_is_written(tmp_path):
    write_cifar(tmp_path)
    folder, out = tmp_path / "cifar-10-batches-bin", tmp_path / "out" / "cifar10.jsonl"
    data = (folder / "test_batch.bin").read_bytes()
    (folder / "test_batch.bin").write_bytes(data[:-1])
    with pytest.raises(ConversionError, match="test_batch.bin: 6145 bytes is not a whole number of 3073-byte"):
        convert(tmp_path, out)
    (folder / "test_batch.bin").write_bytes(data)
    batch = bytearray((folder / "data_batch_2.bin").read_bytes())
    batch[3073] = 10  # the second record's label byte
    (folder / "data_batch_2.bin").write_bytes(bytes(batch))
    with pytest.raises(ConversionError, match="data_batch_2.bin: record 1 has label byte 10"):
        convert(tmp_path, out)
    assert not out.parent.exists()


def test_a_batch_cut_short_at_a_record_boundary_is_refused(tmp_path):
    write_cifar(tmp_path)
    batch = tmp_path / "cifar-10-batches-bin" / "data_batch_4.bin"
    batch.write_bytes(batch.read_bytes()[: cifar10.RECORD_BYTES])
    with pytest.raises(ConversionError, match=rf"data_batch_4.bin: 1 records, expected {PER_BATCH} .*extract .* again"):
        convert(tmp_path, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()
