"""configs/paper/ end to end on a CPU: the planted shapes, written in each public dataset's own layout
(COCO's Karpathy split, Flickr30K, CIFAR-10 binary, LibriSpeech, MSR-VTT with its 1k-A file, ESC-50),
converted by `oneencoder data convert`, then the three paper pipelines run unchanged for one step per
stage, with only the encoders (tiny random ones for the hub models) and the hardware swapped."""

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml
from conftest import tiny_encoder
from PIL import Image

from datamodules.converters import cifar10, converter
from datamodules.manifest import read_manifest
from stages.cli import main

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ("image_text", "audio_text", "video_text")
PER_SPLIT = {"train": 8, "val": 4, "test": 4}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _planted(shapes_manifest: Path) -> list:
    """A few records of each split of the planted set."""
    records = read_manifest(shapes_manifest)
    return [r for split, n in PER_SPLIT.items() for r in [r for r in records if r.split == split][:n]]


def _karpathy(records: list, root: Path, folder: str, name: str) -> None:
    entries = []
    for n, record in enumerate(records):
        filename = f"{n:06d}.jpg"
        (root / folder).mkdir(parents=True, exist_ok=True)
        Image.open(record.path("image")).convert("RGB").save(root / folder / filename)
        sentences = [{"raw": caption, "tokens": caption.split(), "imgid": n, "sentid": 10 * n + i}
                     for i, caption in enumerate(record.captions())]
        entry = {"filename": filename, "imgid": n, "split": record.split, "sentences": sentences}
        if name == "coco":
            entry.update(filepath=folder, cocoid=n)
        entries.append(entry)
    (root / f"dataset_{name}.json").write_text(json.dumps({"images": entries, "dataset": name}))


def _textcaps(records: list, root: Path) -> None:
    (root / "train_images").mkdir(parents=True)
    for split in ("train", "val"):
        data = []
        for n, record in enumerate(r for r in records if r.split == split):
            image_id = f"{split}{n:04d}"
            Image.open(record.path("image")).convert("RGB").save(root / "train_images" / f"{image_id}.jpg")
            data += [{"image_id": image_id, "image_name": image_id, "image_path": f"train/{image_id}.jpg",
                      "set_name": split, "caption_id": i, "caption_str": caption, "reference_strs": record.captions()}
                     for i, caption in enumerate(record.captions())]
        (root / f"TextCaps_0.1_{split}.json").write_text(
            json.dumps({"dataset_type": split, "dataset_name": "textcaps", "data": data}))


def _cifar10(records: list, root: Path) -> None:
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    (folder / "batches.meta.txt").write_text("\n".join(CIFAR10_CLASSES) + "\n\n")
    rows = []
    for n, record in enumerate(records):
        pixels = np.asarray(Image.open(record.path("image")).convert("RGB").resize((32, 32)))
        rows.append(bytes([n % 10]) + pixels.transpose(2, 0, 1).tobytes())
    for name in [f"data_batch_{n}.bin" for n in range(1, 6)] + ["test_batch.bin"]:
        (folder / name).write_bytes(b"".join(rows))  # as many records in each file, as the real ones hold


def _librispeech(records: list, root: Path) -> None:
    subsets = {"train": "train-clean-100", "val": "dev-clean", "test": "test-clean"}
    for n, record in enumerate(records):
        chapter = root / subsets[record.split] / "19" / str(100 + n)
        chapter.mkdir(parents=True)
        samples, rate = soundfile.read(record.path("audio"))
        soundfile.write(chapter / f"19-{100 + n}-0000.flac", samples, rate)
        (chapter / f"19-{100 + n}.trans.txt").write_text(f"19-{100 + n}-0000 {record.captions()[0].upper()}\n")


def _msrvtt(records: list, root: Path) -> None:
    (root / "videos/all").mkdir(parents=True)
    videos, sentences, test_rows = [], [], []
    official = {"train": "train", "val": "validate", "test": "test"}
    for n, record in enumerate(records):
        video_id = f"video{n}"
        shutil.copy(record.path("video"), root / "videos/all" / f"{video_id}.mp4")
        videos.append({"category": 0, "url": "", "video_id": video_id, "start time": 0.0, "end time": 0.5,
                       "split": official[record.split], "id": n})
        sentences += [{"caption": c, "video_id": video_id, "sen_id": 10 * n + i} for i, c in enumerate(record.captions())]
        if record.split == "test":
            test_rows.append([f"ret{n}", f"msr{n}", video_id, record.captions()[0]])
    (root / "MSRVTT_data.json").write_text(json.dumps({"videos": videos, "sentences": sentences}))
    with (root / "MSRVTT_JSFUSION_test.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["key", "vid_key", "video_id", "sentence"], *test_rows])


def _esc50(records: list, root: Path) -> None:
    (root / "meta").mkdir(parents=True)
    (root / "audio").mkdir()
    rows = [["filename", "fold", "target", "category", "esc10", "src_file", "take"]]
    for n, record in enumerate(records):
        filename = f"{n % 5 + 1}-{1000 + n}-A-0.wav"
        shutil.copy(record.path("audio"), root / "audio" / filename)
        rows.append([filename, str(n % 5 + 1), "0", record.fields["label"].replace(" ", "_"), "False", str(1000 + n), "A"])
    with (root / "meta/esc50.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)


@pytest.fixture(scope="module")
def paper_workdir(shapes_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working folder laid out as docs/reproduce.md says: raw datasets converted into data/paper/,
    and configs/paper/ with the stage configs' encoders and hardware swapped for a CPU test."""
    work = tmp_path_factory.mktemp("paper")
    raw = work / "datasets"
    records = _planted(shapes_manifest)
    _karpathy(records, raw / "coco", "val2014", "coco")
    _karpathy(records, raw / "flickr30k", "flickr30k-images", "flickr30k")
    _textcaps(records, raw / "textcaps")
    _cifar10(records, raw)
    _librispeech(records, raw / "LibriSpeech")
    _msrvtt(records, raw / "msrvtt")
    _esc50(records, raw / "ESC-50-master")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cifar10, "RECORDS_PER_BATCH", len(records))  # 10,000 in the real files
        for source, root, out in _make_conversions(raw):  # the very commands `make paper` runs
            conversion = converter(source)(Path(root), work / out)
            assert not conversion.skipped, (source, conversion.skipped)
    shutil.copytree(ROOT / "configs/paper", work / "configs/paper")
    for stage in (work / "configs/paper/stages").glob("*.yaml"):
        stage.write_text(yaml.safe_dump(_on_cpu_with_tiny_encoders(yaml.safe_load(stage.read_text()))))
    return work


def _make_conversions(datasets: Path, targets: tuple[str, ...] = ("paper",)) -> list[list[str]]:
    """(source, root, manifest) of each `oneencoder data convert` that `make <targets>` would run."""
    dry_run = subprocess.run(["make", "-n", "-B", *targets, f"DATASETS={datasets}"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
    return [line.split(" data convert ")[1].split() for line in dry_run.splitlines() if " data convert " in line]


def _on_cpu_with_tiny_encoders(config: dict) -> dict:
    """One of the stage files (the shared base or a stage's own) made to run here: a config merged from
    them all then runs on the CPU with tiny encoders."""
    config.setdefault("trainer", {}).update(
        accelerator="cpu", devices=1, strategy="auto", max_epochs=1, limit_train_batches=1, limit_val_batches=1,
        enable_progress_bar=False,
    )  # precision stays the paper's bf16-mixed
    model = config.get("model", {}).get("init_args", {})
    tiny = {kind: {k: v for k, v in dataclasses.asdict(tiny_encoder(kind)).items() if v is not None}
            for kind in ("image", "text", "audio", "video")}
    if "encoder" in model:
        model["encoder"] = tiny[model["modality"]]
    elif "model" in model:
        encoders = model["model"]["init_args"]["config"]["encoders"]
        for modality in encoders:
            encoders[modality] = tiny[modality]
    config.setdefault("data", {}).setdefault("init_args", {}).update(batch_size=4, num_workers=0)
    return config


def _pipeline(config: str, cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "stages.cli", "pipeline", config], cwd=cwd, capture_output=True, text=True,
        timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def test_make_converts_every_manifest_the_paper_configs_read():
    made = {out for _, _, out in _make_conversions(Path("datasets"), ("paper", "paper-codebook"))}
    read = set()
    for config in (ROOT / "configs/paper").rglob("*.yaml"):
        data = yaml.safe_load(config.read_text())
        read |= {e["manifest"] for e in data.get("evaluation", [])}
        manifest = data.get("data", {}).get("init_args", {}).get("manifest", [])
        read |= set([manifest] if isinstance(manifest, str) else manifest)
    assert read <= made, read - made


def test_converted_fixtures_hold_the_splits_each_evaluation_reads(paper_workdir):
    manifests = {p.stem: read_manifest(p) for p in (paper_workdir / "data/paper").glob("*.jsonl")}
    test = {name: [r for r in records if r.split == "test"] for name, records in manifests.items()}
    assert {name: len(records) for name, records in test.items()} == {
        "coco": 4, "flickr30k": 4, "textcaps": 0, "librispeech": 4, "msrvtt": 4, "cifar10": 16, "esc50": 16}
    assert all(len(r.fields["text"]) == 1 for r in test["msrvtt"])  # 1k-A: one query caption per video
    assert {r.split for r in manifests["cifar10"]} == {"train", "test"}
    assert {r.fields["label"] for r in manifests["cifar10"]} == set(CIFAR10_CLASSES)


@pytest.mark.parametrize("config", [f"configs/paper/{name}.yaml" for name in PIPELINES])
def test_every_paper_stage_config_parses_as_written(config, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the configs name each other from the repository's root
    for stage in yaml.safe_load((ROOT / config).read_text())["stages"]:
        files = [stage["config"]] if isinstance(stage["config"], str) else stage["config"]
        configs = [word for file in files for word in ("--config", str(ROOT / file))]
        with pytest.raises(SystemExit) as exited:  # in this process: a process per stage costs a minute
            main(["fit", *configs, "--print_config"])
        assert exited.value.code in (None, 0), capsys.readouterr().err[-2000:]
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["trainer"]["precision"] == "bf16-mixed" and printed["trainer"]["devices"] == -1
        assert printed["trainer"]["strategy"] == "ddp"


@pytest.mark.slow  # two minutes: three pipelines of three processes each, every evaluation and its report
def test_paper_pipelines_run_one_step_per_stage_and_report_each_table(paper_workdir):
    printed = "".join(_pipeline(f"configs/paper/{name}.yaml", paper_workdir) for name in PIPELINES)
    assert printed.count("feature cache ready") == 3  # built before each fit, in the pipeline's process
    out = paper_workdir / "outputs/paper"
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["align-audio", "align-video", "figures", "up"]
    assert (out / "report.html").is_file()  # every evaluation's figures, the zero-shot-only ones included
    results = {p.stem.removeprefix("results-"): json.loads(p.read_text()) for p in out.glob("results-*.json")}
    assert set(results) == {"cifar10-zero-shot", "coco-5k", "flickr30k-1k", "librispeech", "esc50-zero-shot",
                            "msrvtt-1k-a"}
    assert set(results["cifar10-zero-shot"]["zero_shot"]["metrics"]) == {"image/zero-shot/acc@1", "image/zero-shot/acc@5"}
    assert results["cifar10-zero-shot"]["zero_shot"]["sizes"]["image"] == {"records": 16, "classes": 10, "templates": 1}
    assert {"audio->text/R@1", "text->audio/R@1"} <= set(results["librispeech"]["metrics"])
    assert {"text->video/R@1", "text->video/R@5"} <= set(results["msrvtt-1k-a"]["metrics"])
    assert results["msrvtt-1k-a"]["sizes"]["text->video"] == {"queries": 4, "gallery": 4}
    assert "image->text/R@1" in results["coco-5k"]["metrics"]
    assert "audio/zero-shot/acc@1" in results["esc50-zero-shot"]["zero_shot"]["metrics"]
    up = json.loads((out / "up/stage.json").read_text())
    assert up["status"] == "done"
    again = _pipeline("configs/paper/video_text.yaml", paper_workdir)  # the shared stage 1 is not trained again
    assert "up: done earlier" in again and "align-video: done earlier" in again
