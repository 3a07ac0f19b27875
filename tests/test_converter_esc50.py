"""ESC-50: meta/esc50.csv indexing audio/<filename> wav clips, all used as the zero-shot test set."""

from pathlib import Path

import numpy as np
import pytest
import soundfile

from datamodules.converters import ConversionError, converter
from datamodules.manifest import read_manifest

convert = converter("esc50")
HEADER = "filename,fold,target,category,esc10,src_file,take"
ROWS = ["1-100032-A-0.wav,1,0,dog,True,100032,A",
        "1-100038-A-14.wav,1,14,chirping_birds,False,100038,A",
        "5-9032-A-0.wav,5,0,dog,True,9032,A"]


def write_esc50(root: Path, rows: list[str], wavs: list[str], header: str = HEADER) -> None:
    """The repository's layout: meta/esc50.csv and audio/<filename> (0.1 s of 44.1 kHz silence)."""
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "esc50.csv").write_text("".join(f"{line}\n" for line in [header, *rows]))
    (root / "audio").mkdir()
    for name in wavs:
        soundfile.write(root / "audio" / name, np.zeros(4410, dtype=np.float32), 44100)


def test_every_clip_is_a_test_record_with_a_prompt_ready_label(tmp_path):
    root = tmp_path / "ESC-50-master"
    write_esc50(root, ROWS, ["1-100032-A-0.wav", "1-100038-A-14.wav", "5-9032-A-0.wav"])
    out = tmp_path / "manifests" / "esc50.jsonl"

    conversion = convert(root, out)

    records = read_manifest(out)
    assert [(r.id, r.split) for r in records] == [("esc50/1-100032-A-0", "test"), ("esc50/1-100038-A-14", "test"),
                                                  ("esc50/5-9032-A-0", "test")]
    assert [(r.fields["label"], r.fields["fold"], r.fields["esc10"]) for r in records] == [
        ("dog", 1, True), ("chirping birds", 1, False), ("dog", 5, True)]
    assert [r.path("audio").resolve() for r in records] == [
        (root / "audio" / name).resolve() for name in ("1-100032-A-0.wav", "1-100038-A-14.wav", "5-9032-A-0.wav")]
    assert conversion.written == {"test": 3}
    assert not conversion.skipped


def test_a_missing_wav_is_skipped(tmp_path):
    write_esc50(tmp_path, ROWS, ["1-100038-A-14.wav"])
    out = tmp_path / "esc50.jsonl"

    conversion = convert(tmp_path, out)

    assert [r.id for r in read_manifest(out)] == ["esc50/1-100038-A-14"]
    assert conversion.skipped == {"audio file missing": 2}


def test_a_missing_csv_or_root_names_the_csv(tmp_path):
    with pytest.raises(ConversionError, match=r"absent/meta/esc50\.csv"):
        convert(tmp_path / "absent", tmp_path / "esc50.jsonl")


def test_a_wrong_header_names_the_missing_columns(tmp_path):
    header = "filename,fold,target,category,src_file,take"
    write_esc50(tmp_path, ["1-100032-A-0.wav,1,0,dog,100032,A"], [], header=header)
    with pytest.raises(ConversionError, match=r"esc50\.csv: header lacks the column\(s\) esc10"):
        convert(tmp_path, tmp_path / "esc50.jsonl")


@pytest.mark.parametrize("fold", ["0", "6", "one"])
def test_a_fold_outside_the_five_official_ones_names_the_row(tmp_path, fold):
    write_esc50(tmp_path, [ROWS[0], f"1-100038-A-14.wav,{fold},14,chirping_birds,False,100038,A"], [])
    out = tmp_path / "esc50.jsonl"
    with pytest.raises(ConversionError, match=rf"esc50\.csv:3: fold must be 1\.\.5, found '{fold}'"):
        convert(tmp_path, out)
    assert not out.exists()


def test_without_its_audio_folder_the_folder_is_named_and_nothing_is_written(tmp_path):
    write_esc50(tmp_path, ROWS, [])
    (tmp_path / "audio").rmdir()
    with pytest.raises(ConversionError, match=r"expected ESC-50's clips folder audio/ at .*audio"):
        convert(tmp_path, tmp_path / "esc50.jsonl")
    (tmp_path / "audio").mkdir()
    with pytest.raises(ConversionError, match=r"no record .*3 audio file missing.*wav files in .*audio"):
        convert(tmp_path, tmp_path / "esc50.jsonl")
    assert not (tmp_path / "esc50.jsonl").exists()


def test_the_folder_the_archive_was_extracted_in_is_a_root(tmp_path):
    write_esc50(tmp_path / "ESC-50-master", ROWS[:1], ["1-100032-A-0.wav"])
    assert convert(tmp_path, tmp_path / "esc50.jsonl").written == {"test": 1}
