"""LibriSpeech: subset/speaker/chapter folders of flac files with one .trans.txt per chapter."""

from pathlib import Path

import numpy as np
import pytest
import soundfile

from datamodules.converters import ConversionError, converter
from datamodules.manifest import read_manifest

convert = converter("librispeech")


def write_chapter(root: Path, subset: str, speaker: str, chapter: str, lines: list[str],
                  flacs: list[str]) -> Path:
    """A chapter folder as in the tarballs: `<utterance>.flac` files (0.1 s of 16 kHz silence) and
    `<speaker>-<chapter>.trans.txt`."""
    folder = root / subset / speaker / chapter
    folder.mkdir(parents=True)
    for utterance in flacs:
        soundfile.write(folder / f"{utterance}.flac", np.zeros(1600, dtype=np.float32), 16000)
    (folder / f"{speaker}-{chapter}.trans.txt").write_text("".join(f"{line}\n" for line in lines))
    return folder


def test_subsets_map_to_splits_with_transcripts_as_written(tmp_path):
    root = tmp_path / "LibriSpeech"
    root.mkdir()
    (root / "SPEAKERS.TXT").write_text("; speakers\n")
    test = write_chapter(root, "test-clean", "1089", "134686", ["1089-134686-0000 HE HOPED THERE WOULD BE STEW",
                                                                 "1089-134686-0001 STUFF IT INTO YOU"],
                         ["1089-134686-0000", "1089-134686-0001"])
    dev = write_chapter(root, "dev-other", "116", "288045", ["116-288045-0000 AS I APPROACHED THE CITY"],
                        ["116-288045-0000"])
    train = write_chapter(root, "train-clean-100", "103", "1240", ["103-1240-0000 CHAPTER ONE MISSUS RACHEL'S"],
                          ["103-1240-0000"])
    out = tmp_path / "manifests" / "librispeech.jsonl"

    conversion = convert(root, out)

    records = read_manifest(out)
    assert [(r.id, r.split) for r in records] == [("librispeech/103-1240-0000", "train"),
                                                  ("librispeech/116-288045-0000", "val"),
                                                  ("librispeech/1089-134686-0000", "test"),
                                                  ("librispeech/1089-134686-0001", "test")]
    assert [r.fields["text"] for r in records] == ["CHAPTER ONE MISSUS RACHEL'S", "AS I APPROACHED THE CITY",
                                                   "HE HOPED THERE WOULD BE STEW", "STUFF IT INTO YOU"]
    assert [r.path("audio").resolve() for r in records] == [
        (train / "103-1240-0000.flac").resolve(), (dev / "116-288045-0000.flac").resolve(),
        (test / "1089-134686-0000.flac").resolve(), (test / "1089-134686-0001.flac").resolve()]
    assert [(r.fields["subset"], r.fields["speaker"]) for r in records] == [
        ("train-clean-100", "103"), ("dev-other", "116"), ("test-clean", "1089"), ("test-clean", "1089")]
    assert conversion.written == {"train": 1, "val": 1, "test": 2}
    assert not conversion.skipped


def test_missing_flac_and_missing_transcript_line_are_skipped(tmp_path):
    root = tmp_path / "LibriSpeech"
    write_chapter(root, "dev-clean", "84", "121123", ["84-121123-0000 GO DO YOU HEAR", "84-121123-0001 BUT IN LESS"],
                  ["84-121123-0001", "84-121123-0002"])
    out = tmp_path / "librispeech.jsonl"

    conversion = convert(root, out)

    assert [r.id for r in read_manifest(out)] == ["librispeech/84-121123-0001"]
    assert conversion.written == {"val": 1}
    assert conversion.skipped == {"audio file missing": 1, "no transcript line": 1}


def test_a_transcript_line_without_a_transcript_names_the_file_and_line(tmp_path):
    root = tmp_path / "LibriSpeech"
    write_chapter(root, "test-other", "1688", "142285", ["1688-142285-0000 THERE'S IRON THEY SAY", "1688-142285-0001"],
                  ["1688-142285-0000", "1688-142285-0001"])

    with pytest.raises(ConversionError, match=r"1688-142285\.trans\.txt:2"):
        convert(root, tmp_path / "librispeech.jsonl")


def test_a_root_without_subset_folders_names_the_expected_folders(tmp_path):
    (tmp_path / "LibriSpeech").mkdir()
    with pytest.raises(ConversionError, match="train-clean-100, .*test-other"):
        convert(tmp_path / "LibriSpeech", tmp_path / "librispeech.jsonl")
    with pytest.raises(ConversionError, match="LibriSpeech folder .* at .*absent"):
        convert(tmp_path / "absent", tmp_path / "librispeech.jsonl")


def test_wav_clips_and_the_folder_holding_librispeech_are_accepted(tmp_path):
    folder = write_chapter(tmp_path / "LibriSpeech", "dev-clean", "84", "121123", ["84-121123-0000 GO", "84-121123-0001 DO"],
                           ["84-121123-0000"])
    soundfile.write(folder / "84-121123-0001.wav", np.zeros(1600, dtype=np.float32), 16000)
    soundfile.write(folder / "84-121123-0000.wav", np.zeros(1600, dtype=np.float32), 16000)  # the flac wins
    out = tmp_path / "librispeech.jsonl"
    convert(tmp_path, out)
    assert [r.path("audio").name for r in read_manifest(out)] == ["84-121123-0000.flac", "84-121123-0001.wav"]


def test_no_audio_at_all_is_an_error_naming_what_was_looked_for(tmp_path):
    folder = write_chapter(tmp_path, "dev-clean", "84", "121123", ["84-121123-0000 GO"], [])
    soundfile.write(folder / "84-121123-0000.mp3", np.zeros(1600, dtype=np.float32), 16000)
    with pytest.raises(ConversionError, match=r"no record .*1 audio file missing.*\.flac \(or \.wav\).*dev-clean"):
        convert(tmp_path, tmp_path / "librispeech.jsonl")
    assert not (tmp_path / "librispeech.jsonl").exists()
