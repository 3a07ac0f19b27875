"""VGGSound: vggsound.csv (youtube_id,start_seconds,label,split) over video/<id>_<start:06d>.mp4, the
sound extracted beside the manifest, val carved from train by YouTube video; the shared-classes
variant (sound only) for CMG's UCF-101 <-> VGGSound task."""

from pathlib import Path

import pytest
import soundfile
from av_clips import write_clip

from datamodules.converters import ConversionError, converter
from datamodules.converters.audio_track import SAMPLING_RATE
from datamodules.converters.shared_classes import PAIRS, UCF_FILE, VGGSOUND_FILE
from datamodules.converters.vggsound import VAL_PERCENT, _held_out
from datamodules.manifest import read_manifest

convert, convert_shared = converter("vggsound"), converter("vggsound-shared")
# Two train videos whose id hashes into val, and two that stay train (found by _held_out; checked below).
VAL_IDS, TRAIN_IDS = ["id_000002", "id_000007"], ["id_000000", "id_000001"]
ROWS = [
    f"{TRAIN_IDS[0]},30,playing acoustic guitar,train",
    f"{VAL_IDS[0]},0,playing acoustic guitar,train",
    f"{VAL_IDS[0]},40,playing acoustic guitar,train",  # a second clip of the same video: val too
    f'{TRAIN_IDS[1]},120,"dog barking, growling",train',  # a label with a comma, quoted
    f"{VAL_IDS[1]},5,dog barking,train",
    "test_000001,10,playing acoustic guitar,test",
    "test_000002,0,dog barking,test",
    "nosound0001,0,dog barking,test",
    "missing0001,0,dog barking,train",
]


def write_vggsound(root: Path, rows: list[str] = ROWS) -> Path:
    """The CSV as distributed (no header) and the clips in video/ (nosound0001's without a sound track,
    missing0001's absent)."""
    root.mkdir(parents=True)
    (root / "vggsound.csv").write_text("".join(f"{row}\n" for row in rows))
    for row in rows:
        youtube_id, start = row.split(",")[:2]
        if youtube_id not in ("missing0001", "youtube_id"):
            write_clip(root / "video" / f"{youtube_id}_{int(start):06d}.mp4", sound=youtube_id != "nosound0001")
    return root


def test_the_chosen_ids_fall_where_the_tests_say():
    assert all(_held_out(i) for i in VAL_IDS) and not any(_held_out(i) for i in TRAIN_IDS)
    held = sum(_held_out(f"video{n}") for n in range(10_000))
    assert abs(held / 100 - VAL_PERCENT) < 1


def test_official_splits_with_val_by_video_and_the_sound_extracted(tmp_path):
    root = write_vggsound(tmp_path / "vggsound")
    out = tmp_path / "manifests" / "vggsound.jsonl"

    conversion = convert(root, out)

    records = read_manifest(out)
    assert [(r.id, r.split, r.fields["label"]) for r in records] == [
        ("vggsound/id_000000_000030", "train", "playing acoustic guitar"),
        ("vggsound/id_000001_000120", "train", "dog barking, growling"),
        ("vggsound/id_000002_000000", "val", "playing acoustic guitar"),
        ("vggsound/id_000002_000040", "val", "playing acoustic guitar"),
        ("vggsound/id_000007_000005", "val", "dog barking"),
        ("vggsound/test_000001_000010", "test", "playing acoustic guitar"),
        ("vggsound/test_000002_000000", "test", "dog barking"),
    ]
    first = records[0]
    assert (first.fields["text"], first.fields["youtube_id"], first.fields["start"]) == (
        "a video of playing acoustic guitar", "id_000000", 30)
    assert first.path("video").resolve() == (root / "video" / "id_000000_000030.mp4").resolve()
    sound, rate = soundfile.read(first.path("audio"))
    assert first.path("audio").resolve() == (out.parent / "vggsound" / "audio" / "id_000000_000030.wav").resolve()
    assert rate == SAMPLING_RATE and sound.ndim == 1 and sound.std() > 0.05
    assert conversion.written == {"train": 2, "val": 3, "test": 2}
    assert conversion.skipped == {"video file missing": 1, "no audio track": 1}


def test_clips_named_without_padding_or_in_the_root_are_found(tmp_path):
    root = write_vggsound(tmp_path / "vggsound", ROWS[:1])
    (root / "video" / "id_000000_000030.mp4").rename(root / "id_000000_30.mp4")
    (root / "video").rmdir()
    convert(root, tmp_path / "v.jsonl")
    records = read_manifest(tmp_path / "v.jsonl")
    assert records[0].path("video").resolve() == (root / "id_000000_30.mp4").resolve()


def test_the_shared_variant_keeps_the_shared_classes_as_sound_only(tmp_path):
    others = [label for _, label in PAIRS if label != "playing acoustic guitar"]
    rows = ROWS + [f"extra{n:06d},0,{label},test" for n, label in enumerate(others)]  # every shared label
    root = write_vggsound(tmp_path / "vggsound", rows)
    out = tmp_path / "vggsound_shared.jsonl"
    conversion = convert_shared(root, out)
    records = read_manifest(out)
    assert {r.fields["label"] for r in records} == {label for _, label in PAIRS}
    assert all("video" not in r.fields and r.path("audio").is_file() for r in records)
    assert conversion.written == {"train": 1, "val": 2, "test": 1 + len(others)}
    assert not conversion.skipped  # the dog barking rows are not shared classes: neither read nor counted


def test_a_shared_label_absent_from_the_csv_is_named(tmp_path):
    root = write_vggsound(tmp_path / "vggsound", ROWS[:1])
    (root / UCF_FILE).write_text("PlayingGuitar\nPlayingCello\n")
    (root / VGGSOUND_FILE).write_text("playing acoustic guitar\nplaying violoncello\n")
    with pytest.raises(ConversionError, match=r"shared classes 'playing violoncello' are not labels in .*vggsound\.csv"):
        convert_shared(root, tmp_path / "shared.jsonl")


@pytest.mark.parametrize(("row", "message"), [
    ("abc,10,dog barking", r"vggsound\.csv:2: expected youtube_id,start_seconds,label,split"),
    ("abc,ten,dog barking,train", r"vggsound\.csv:2: start_seconds must be a whole number, found 'ten'"),
    ("abc,10,dog barking,validation", r"vggsound\.csv:2: split must be train or test, found 'validation'"),
])
def test_a_malformed_row_names_the_file_and_line(tmp_path, row, message):
    root = tmp_path / "vggsound"
    root.mkdir()
    (root / "vggsound.csv").write_text(f"{ROWS[0]}\n{row}\n")
    out = tmp_path / "v.jsonl"
    with pytest.raises(ConversionError, match=message):
        convert(root, out)
    assert not out.exists()


def test_a_header_line_is_skipped_and_a_missing_csv_or_clips_are_named(tmp_path):
    root = write_vggsound(tmp_path / "vggsound", ["youtube_id,start_seconds,label,split", ROWS[0]])
    assert convert(root, tmp_path / "v.jsonl").written == {"train": 1}
    (root / "vggsound.csv").unlink()
    with pytest.raises(ConversionError, match=r"expected VGGSound's index vggsound\.csv at .*vggsound\.csv"):
        convert(root, tmp_path / "v.jsonl")
    (root / "vggsound.csv").write_text(ROWS[-1] + "\n")
    with pytest.raises(ConversionError, match=r"no record .*1 video file missing.*_<start:06d>\.mp4 in .*video"):
        convert(root, tmp_path / "v.jsonl")
