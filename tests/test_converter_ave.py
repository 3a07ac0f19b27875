"""AVE: the official split files (Category&VideoID&Quality&StartTime&EndTime) over AVE/<VideoID>.mp4,
each clip's sound extracted to a 16 kHz wav beside the manifest; skips and malformed layouts."""

from pathlib import Path

import pytest
import soundfile
from av_clips import write_clip

from datamodules.converters import ConversionError, converter
from datamodules.converters.audio_track import SAMPLING_RATE
from datamodules.manifest import read_manifest

convert = converter("ave")
HEADER = "Category&VideoID&Quality&StartTime&EndTime"
SPLITS = {
    "trainSet.txt": ["Church bell&RUhOCu3LNXM&good&0&10", "Dog barking&aaaaaaaaaaa&good&2&6",
                     "Dog barking&aaaaaaaaaaa&good&8&9", "Frying (food)&silent00000&good&0&10",
                     "Rodents, rats&nofile0000&bad&1&4"],
    "valSet.txt": ["Male speech, man speaking&vvvvvvvvvvv&good&3&3"],
    "testSet.txt": [HEADER, "Church bell&ttttttttttt&good&0&5"],
}
CLIPS = {"RUhOCu3LNXM": True, "aaaaaaaaaaa": True, "silent00000": False, "vvvvvvvvvvv": True, "ttttttttttt": True}


def write_ave(root: Path, splits: dict[str, list[str]] = SPLITS) -> Path:
    """AVE_Dataset/ as distributed: the split files and AVE/<VideoID>.mp4 (silent00000 has no sound
    track, nofile0000 no mp4)."""
    root.mkdir(parents=True)
    for name, lines in splits.items():
        (root / name).write_text("".join(f"{line}\r\n" for line in lines))  # the release's CRLF lines
    (root / "Annotations.txt").write_text(HEADER + "\n" + "".join(f"{line}\n" for lines in splits.values()
                                                                  for line in lines if line != HEADER))
    for video_id, sound in CLIPS.items():
        write_clip(root / "AVE" / f"{video_id}.mp4", sound=sound)
    return root


def test_official_splits_with_labels_prompts_events_and_extracted_sound(tmp_path):
    root = write_ave(tmp_path / "AVE_Dataset")
    out = tmp_path / "manifests" / "ave.jsonl"

    conversion = convert(root, out)

    records = read_manifest(out)
    assert [(r.id, r.split, r.fields["label"], r.fields["events"]) for r in records] == [
        ("ave/RUhOCu3LNXM", "train", "Church bell", [[0, 10]]),
        ("ave/aaaaaaaaaaa", "train", "Dog barking", [[2, 6], [8, 9]]),  # two rows, one video
        ("ave/vvvvvvvvvvv", "val", "Male speech, man speaking", []),  # its only row is an empty event
        ("ave/ttttttttttt", "test", "Church bell", [[0, 5]]),
    ]
    assert records[1].fields["text"] == "a video of dog barking"
    assert records[0].path("video").resolve() == (root / "AVE" / "RUhOCu3LNXM.mp4").resolve()
    wav = records[0].path("audio")
    assert wav.resolve() == (out.parent / "ave" / "audio" / "RUhOCu3LNXM.wav").resolve()
    sound, rate = soundfile.read(wav)
    assert rate == SAMPLING_RATE and sound.ndim == 1 and 0.8 * rate < len(sound) <= 1.1 * rate and sound.std() > 0.05
    assert conversion.written == {"train": 2, "val": 1, "test": 1}
    assert conversion.skipped == {"no audio track": 1, "video file missing": 1}


def test_a_rerun_keeps_the_extracted_wavs(tmp_path):
    root = write_ave(tmp_path / "AVE_Dataset")
    out = tmp_path / "ave.jsonl"
    convert(root, out)
    wav = out.parent / "ave" / "audio" / "RUhOCu3LNXM.wav"
    written = wav.stat().st_mtime_ns
    (root / "AVE" / "RUhOCu3LNXM.mp4").write_bytes(b"not decodable any more")
    assert convert(root, out).written == {"train": 2, "val": 1, "test": 1}
    assert wav.stat().st_mtime_ns == written


def test_the_folder_holding_ave_dataset_is_a_root(tmp_path):
    write_ave(tmp_path / "AVE_Dataset")
    assert convert(tmp_path, tmp_path / "ave.jsonl").written == {"train": 2, "val": 1, "test": 1}


def test_an_undecodable_clip_and_a_video_under_two_categories_are_skipped(tmp_path):
    splits = {**SPLITS, "testSet.txt": ["Church bell&ttttttttttt&good&0&5", "Bus&ttttttttttt&good&5&10"]}
    root = write_ave(tmp_path / "AVE_Dataset", splits)
    (root / "AVE" / "vvvvvvvvvvv.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    conversion = convert(root, tmp_path / "ave.jsonl")
    assert conversion.written == {"train": 2}
    assert conversion.skipped == {"no audio track": 1, "video file missing": 1, "audio track not decodable": 1,
                                  "video under several categories": 1}


def test_a_video_in_two_split_files_is_refused(tmp_path):
    root = write_ave(tmp_path / "AVE_Dataset", {**SPLITS, "testSet.txt": ["Church bell&RUhOCu3LNXM&good&0&5"]})
    out = tmp_path / "ave.jsonl"
    with pytest.raises(ConversionError, match=r"testSet\.txt:1: video RUhOCu3LNXM is also in trainSet\.txt"):
        convert(root, out)
    assert not out.exists() and not (tmp_path / "ave").exists()  # checked before any sound is extracted


@pytest.mark.parametrize(("line", "message"), [
    ("Church bell&RUhOCu3LNXM&good&0", "expected Category&VideoID&Quality&StartTime&EndTime"),
    ("Church bell&RUhOCu3LNXM&good&0&11", r"0 <= start <= end <= 10; found '0' and '11'"),
    ("Church bell&RUhOCu3LNXM&good&5&2", "found '5' and '2'"),
])
def test_a_malformed_row_names_the_file_and_line(tmp_path, line, message):
    root = write_ave(tmp_path / "AVE_Dataset", {**SPLITS, "valSet.txt": ["Bus&vvvvvvvvvvv&good&0&1", line]})
    with pytest.raises(ConversionError, match=rf"valSet\.txt:2: .*{message}"):
        convert(root, tmp_path / "ave.jsonl")


def test_missing_split_file_or_clips_folder_is_named(tmp_path):
    with pytest.raises(ConversionError, match=r"expected the AVE folder .* at .*nowhere"):
        convert(tmp_path / "nowhere", tmp_path / "ave.jsonl")
    root = write_ave(tmp_path / "AVE_Dataset")
    (root / "valSet.txt").rename(root / "valSet.txt.bak")
    with pytest.raises(ConversionError, match=r"expected AVE's val list valSet\.txt at .*AVE_Dataset/valSet\.txt"):
        convert(root, tmp_path / "ave.jsonl")
    (root / "valSet.txt.bak").rename(root / "valSet.txt")
    for clip in (root / "AVE").iterdir():
        clip.unlink()
    (root / "AVE").rmdir()
    with pytest.raises(ConversionError, match=r"expected AVE's clips folder AVE/"):
        convert(root, tmp_path / "ave.jsonl")
    (root / "AVE").mkdir()
    with pytest.raises(ConversionError, match=r"no record .*6 video file missing"):
        convert(root, tmp_path / "ave.jsonl")
