"""Flickr30K: Karpathy's split file and the Kaggle results.csv, each in its real on-disk form."""

import json
from pathlib import Path

import pytest
from PIL import Image

from datamodules.converters import ConversionError, converter
from datamodules.converters.flickr30k import convert, convert_results_csv, held_out_splits
from datamodules.manifest import read_manifest

CAPTIONS = {
    "1000092795.jpg": ["Two young guys with shaggy hair look at their hands while hanging out in the yard .",
                       "Two young , White males are outside near many bushes ."],
    "10002456.jpg": ["Several men in hard hats are operating a giant pulley system ."],
    "1000268201.jpg": ["A child in a pink dress is climbing up a set of stairs in an entry way ."],
    "1000344755.jpg": ["Someone in a blue shirt and hat is standing on stair and leaning against a window ."],
}


def write_jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (200, 10, 10)).save(path, format="JPEG")
    return path


def karpathy_entry(imgid: int, filename: str, split: str, raws: list[str]) -> dict:
    sentences = [{"tokens": raw.lower().split(), "raw": raw, "imgid": imgid, "sentid": 5 * imgid + i}
                 for i, raw in enumerate(raws)]
    return {"sentids": [s["sentid"] for s in sentences], "imgid": imgid, "sentences": sentences,
            "split": split, "filename": filename}


def write_karpathy(root: Path, images: list[dict]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_flickr30k.json").write_text(json.dumps({"images": images, "dataset": "flickr30k"}))


def test_karpathy_split_keeps_splits_captions_and_counts_skips(tmp_path):
    root = tmp_path / "flickr30k"
    write_karpathy(root, [
        karpathy_entry(0, "1000092795.jpg", "train", [" " + CAPTIONS["1000092795.jpg"][0] + " ", "",
                                                      CAPTIONS["1000092795.jpg"][1]]),
        karpathy_entry(1, "10002456.jpg", "test", CAPTIONS["10002456.jpg"]),
        karpathy_entry(2, "1000268201.jpg", "val", CAPTIONS["1000268201.jpg"]),
        karpathy_entry(3, "1000344755.jpg", "restval", CAPTIONS["1000344755.jpg"]),
        karpathy_entry(4, "1001465944.jpg", "train", ["A woman walks down a street ."]),  # no image file
        karpathy_entry(5, "1001545525.jpg", "train", ["  "]),  # image, but no caption
    ])
    files = {name: write_jpeg(root / "flickr30k-images" / name) for name in [*CAPTIONS, "1001545525.jpg"]}
    out = tmp_path / "manifests" / "flickr30k.jsonl"
    conversion = converter("flickr30k")(root, out)
    records = read_manifest(out)
    assert [(r.id, r.split) for r in records] == [
        ("flickr30k/1000092795", "train"), ("flickr30k/10002456", "test"),
        ("flickr30k/1000268201", "val"), ("flickr30k/1000344755", "train")]
    for record in records:
        name = record.id.split("/")[1] + ".jpg"
        assert record.fields["text"] == CAPTIONS[name]
        assert record.path("image").resolve() == files[name].resolve()
    assert conversion.written == {"train": 2, "test": 1, "val": 1}
    assert conversion.skipped == {"image file missing": 1, "no caption": 1}


def test_karpathy_split_errors_name_the_file_and_key(tmp_path):
    with pytest.raises(ConversionError, match="dataset_flickr30k.json"):
        convert(tmp_path / "absent", tmp_path / "out.jsonl")
    entry = karpathy_entry(0, "1000092795.jpg", "train", CAPTIONS["1000092795.jpg"])
    del entry["sentences"][1]["raw"]
    write_karpathy(tmp_path / "root", [entry])
    with pytest.raises(ConversionError, match="flickr30k-images"):
        convert(tmp_path / "root", tmp_path / "out.jsonl")
    (tmp_path / "root" / "flickr30k-images").mkdir()
    with pytest.raises(ConversionError, match="dataset_flickr30k.json.*'raw'"):
        convert(tmp_path / "root", tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


def write_results_csv(root: Path, lines: list[str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "results.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


RESULTS_LINES = [
    "image_name| comment_number| comment",
    f"1000092795.jpg| 1| {CAPTIONS['1000092795.jpg'][1]}",
    f"1000092795.jpg| 0| {CAPTIONS['1000092795.jpg'][0]}",
    f"10002456.jpg| 0| {CAPTIONS['10002456.jpg'][0]}",
    "10002456.jpg| 4   A dog runs across the grass .",  # as on the real file's line 19,999
    f"1000268201.jpg| 0| {CAPTIONS['1000268201.jpg'][0]}",
    "1000268201.jpg| 1| ",
    f"1000344755.jpg| 0| {CAPTIONS['1000344755.jpg'][0]}",
    "1001545525.jpg| 0| A woman walks down a street .",  # no image file
]


def test_results_csv_draws_splits_by_sha1_and_skips_malformed_lines(tmp_path):
    root = tmp_path / "flickr30k_images"
    write_results_csv(root, RESULTS_LINES)
    files = {name: write_jpeg(root / "flickr30k_images" / name) for name in CAPTIONS}
    out = tmp_path / "flickr30k.jsonl"
    conversion = converter("flickr30k-csv")(root, out)
    records = read_manifest(out)
    # 5 names -> n = 1; sha1 order: 10002456 (2bce..), 1000344755 (5fbb..), then c858.., cc85.., d4bb..
    assert [(r.id, r.split) for r in records] == [
        ("flickr30k/1000092795", "train"), ("flickr30k/10002456", "test"),
        ("flickr30k/1000268201", "train"), ("flickr30k/1000344755", "val")]
    for record in records:
        name = record.id.split("/")[1] + ".jpg"
        assert record.fields["text"] == CAPTIONS[name]  # comment_number order, not line order
        assert record.path("image").resolve() == files[name].resolve()
    assert conversion.written == {"train": 2, "test": 1, "val": 1}
    assert conversion.skipped == {"malformed line": 2, "image file missing": 1}


def test_results_csv_accepts_the_dashed_image_folder(tmp_path):
    write_results_csv(tmp_path, RESULTS_LINES[:3])
    image = write_jpeg(tmp_path / "flickr30k-images" / "1000092795.jpg")
    convert_results_csv(tmp_path, tmp_path / "out.jsonl")
    assert read_manifest(tmp_path / "out.jsonl")[0].path("image").resolve() == image.resolve()


def test_results_csv_errors_name_the_file(tmp_path):
    with pytest.raises(ConversionError, match="results.csv"):
        convert_results_csv(tmp_path / "absent", tmp_path / "out.jsonl")
    write_results_csv(tmp_path, ["image_name,comment_number,comment", "1000092795.jpg,0,Two guys ."])
    (tmp_path / "flickr30k_images").mkdir()
    with pytest.raises(ConversionError, match="results.csv: header"):
        convert_results_csv(tmp_path, tmp_path / "out.jsonl")


def test_held_out_splits_are_1000_each_on_the_full_set():
    splits = held_out_splits([f"{i}.jpg" for i in range(31783)])
    assert list(splits.values()).count("test") == 1000 and list(splits.values()).count("val") == 1000
    assert held_out_splits(["a.jpg"]) == {"a.jpg": "test"}


@pytest.mark.parametrize("folder", ["flickr30k-images", "flickr30k_images"])
def test_images_one_folder_deeper_as_common_archives_hold_them_are_found(tmp_path, folder):
    write_karpathy(tmp_path, [karpathy_entry(0, "10002456.jpg", "test", CAPTIONS["10002456.jpg"])])
    image = write_jpeg(tmp_path / folder / folder / "10002456.jpg")
    converter("flickr30k")(tmp_path, tmp_path / "out.jsonl")
    assert read_manifest(tmp_path / "out.jsonl")[0].path("image").resolve() == image.resolve()


def test_the_kaggle_download_is_read_from_the_folder_it_was_extracted_in(tmp_path):
    write_results_csv(tmp_path / "flickr30k_images", RESULTS_LINES[:3])
    image = write_jpeg(tmp_path / "flickr30k_images" / "flickr30k_images" / "1000092795.jpg")
    converter("flickr30k-csv")(tmp_path, tmp_path / "out.jsonl")
    assert read_manifest(tmp_path / "out.jsonl")[0].path("image").resolve() == image.resolve()


def test_no_image_found_is_an_error_naming_the_folder_looked_in(tmp_path):
    write_karpathy(tmp_path, [karpathy_entry(0, "10002456.jpg", "test", CAPTIONS["10002456.jpg"])])
    (tmp_path / "flickr30k-images" / "photos").mkdir(parents=True)  # the images one level deeper still
    write_jpeg(tmp_path / "flickr30k-images" / "photos" / "10002456.jpg")
    with pytest.raises(ConversionError, match=r"no record .*1 image file missing.*images named in dataset_flickr30k.json in .*flickr30k-images"):
        converter("flickr30k")(tmp_path, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


def test_a_results_csv_that_is_not_utf8_is_named(tmp_path):
    (tmp_path / "results.csv").write_bytes("image_name| comment_number| comment\n1.jpg| 0| caf\u00e9\n".encode("latin-1"))
    (tmp_path / "flickr30k_images").mkdir()
    with pytest.raises(ConversionError, match=r"results.csv: not UTF-8 text"):
        converter("flickr30k-csv")(tmp_path, tmp_path / "out.jsonl")
