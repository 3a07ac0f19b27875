"""The fault suite (`make faults`): what happens around training when something goes wrong.

Three parts, each on the planted shapes set with the tiny random encoders of `configs/`:

- **kills**: a two-stage pipeline (up -> align audio, feature caches) is SIGKILLed, process group
  and all, at random moments (cache build, mid-epoch, export), rerun until it finishes, and its final
  weights must be bit-identical to an uninterrupted run's;
- **media**: one record of a fresh set is broken in one way (truncated, zero bytes, wrong format,
  NaN audio, a 30000x30000 PNG header, non-UTF-8 manifest bytes, ...), and the training data path,
  online and through the feature cache, with and without `skip_bad_records`, must give a named error
  that points at the record, or a counted skip, or (for input that is merely unusual) train as usual;
- **concurrent cache**: two `oneencoder cache` builds of one config at once must both succeed and
  leave one consistent cache, equal to a build made alone.

Results go to `benchmarks/results/faults.json` and a printed table: faults tried, survived, lost.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import soundfile
import torch
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "faults.json"
PAIRS = {"image": ("image", "text"), "audio": ("audio", "text"), "video": ("video", "text"), "text": ("image", "text")}
STAGE_CONFIGS = {"image": "up.yaml", "text": "up.yaml", "audio": "align_audio.yaml", "video": "align_video.yaml"}


@dataclass
class Outcome:
    part: str
    fault: str
    setting: str
    survived: bool
    result: str  # "named error: ...", "skipped 1", "trained as usual", "bit-identical", or what went wrong


# --- broken media -------------------------------------------------------------------------------------


def _png_header(width: int, height: int) -> bytes:
    """A valid PNG that claims `width` x `height` pixels in a few dozen bytes (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _wav(samples: np.ndarray, rate: int = 16000, subtype: str = "FLOAT") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def _one_frame_video(path: Path) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=16)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 128, np.uint8), format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _truncate(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def _set_field(manifest: Path, line: int, field: str, value: Any) -> None:
    lines = manifest.read_text().splitlines()
    record = json.loads(lines[line])
    record[field] = value
    lines[line] = json.dumps(record)
    manifest.write_text("\n".join(lines) + "\n")


@dataclass(frozen=True)
class MediaFault:
    """Breaks one record (manifest line `line`, 0-based) of a fresh set; `benign` faults are unusual
    input that must simply work."""

    name: str
    modality: str
    breaks: Callable[[Path, dict[str, Any], int], None]  # (manifest, record, line)
    benign: bool = False


def _media(record_field: str, write: Callable[[Path], None]) -> Callable[[Path, dict[str, Any], int], None]:
    return lambda manifest, record, line: write(manifest.parent / record[record_field])


def _non_utf8(manifest: Path, record: dict[str, Any], line: int) -> None:
    lines = manifest.read_bytes().split(b"\n")
    lines[line] = lines[line].replace(b'"text": ["', b'"text": ["\xff\xfe ', 1)
    manifest.write_bytes(b"\n".join(lines))


MEDIA_FAULTS = [
    MediaFault("image truncated", "image", _media("image", lambda p: _truncate(p, 0.5))),
    MediaFault("image zero bytes", "image", _media("image", lambda p: p.write_bytes(b""))),
    MediaFault("image wrong format (a WAV)", "image", _media("image", lambda p: p.write_bytes(_wav(np.zeros(800, np.float32))))),
    MediaFault("image 30000x30000 PNG header", "image", _media("image", lambda p: p.write_bytes(_png_header(30000, 30000)))),
    MediaFault("image path null", "image", lambda m, r, line: _set_field(m, line, "image", None)),
    MediaFault("image path a list", "image", lambda m, r, line: _set_field(m, line, "image", [r["image"]])),
    MediaFault("image file missing", "image", _media("image", lambda p: p.unlink())),
    MediaFault("manifest non-UTF-8 bytes", "text", _non_utf8),
    MediaFault("caption empty", "text", lambda m, r, line: _set_field(m, line, "text", [""])),
    MediaFault("caption 100k characters", "text", lambda m, r, line: _set_field(m, line, "text", ["red " * 25000]), benign=True),
    MediaFault("audio truncated", "audio", _media("audio", lambda p: _truncate(p, 0.3))),
    MediaFault("audio zero bytes", "audio", _media("audio", lambda p: p.write_bytes(b""))),
    MediaFault("audio wrong format (a PNG)", "audio", _media("audio", lambda p: p.write_bytes(_png_header(8, 8)))),
    MediaFault("audio NaN samples", "audio", _media("audio", lambda p: p.write_bytes(_wav(np.full(8000, np.nan, np.float32))))),
    MediaFault("audio infinite samples", "audio", _media("audio", lambda p: p.write_bytes(_wav(np.full(8000, np.inf, np.float32))))),
    MediaFault("audio 0 samples", "audio", _media("audio", lambda p: p.write_bytes(_wav(np.zeros(0, np.float32))))),
    MediaFault("audio 8 channels", "audio", _media("audio", lambda p: p.write_bytes(_wav(np.zeros((8000, 8), np.float32))))),
    MediaFault("audio half its header's length", "audio", _media("audio", lambda p: _truncate(p, 0.5))),
    MediaFault("video truncated", "video", _media("video", lambda p: _truncate(p, 0.3))),
    MediaFault("video zero bytes", "video", _media("video", lambda p: p.write_bytes(b""))),
    MediaFault("video 1 frame", "video", _media("video", _one_frame_video), benign=True),
]


def _stage_config(stage: str, manifest: Path, root: Path, epochs: int, **data: Any) -> dict[str, Any]:
    """A shipped stage config made quick: few epochs, no workers, no progress bar, paths under `root`."""
    config = yaml.safe_load((ROOT / "configs" / stage).read_text())
    config["trainer"].update(max_epochs=epochs, enable_progress_bar=False)
    config["data"]["init_args"].update({"manifest": str(manifest), "batch_size": 16, "num_workers": 0,
                                        "feature_cache": str(root / f"features-{Path(stage).stem}"), **data})
    return config


def _model_for(modality: str) -> Any:
    """The tiny model of the shipped configs, with `modality`'s encoder added when it is audio or video."""
    from oneencoder import EncoderConfig, OneEncoder, OneEncoderConfig

    up = yaml.safe_load((ROOT / "configs/up.yaml").read_text())["model"]["init_args"]["model"]["init_args"]["config"]
    config = OneEncoderConfig(encoders={m: EncoderConfig(**e) for m, e in up.pop("encoders").items()}, **up)
    model = OneEncoder(config)
    if modality in ("audio", "video"):
        stage = yaml.safe_load((ROOT / "configs" / STAGE_CONFIGS[modality]).read_text())["model"]["init_args"]
        model.add_modality(modality, EncoderConfig(**stage["encoder"]))
    return model


def _read_training_data(manifest: Path, modality: str, skip: bool, cache: Path | None) -> int:
    """Everything a fit reads before and while training; returns how many records were skipped."""
    from datamodules import ManifestDataModule

    data = ManifestDataModule(str(manifest), modalities=PAIRS[modality], batch_size=16, num_workers=0,
                              skip_bad_records=skip, encoders=_model_for(modality).encoders,
                              feature_cache=None if cache is None else str(cache))
    if cache is not None:
        data.build_feature_cache()
    data.setup("fit")
    skipped = data.num_skipped_at_setup
    for loader in (data.train_dataloader(), data.val_dataloader()):
        skipped += sum(batch["num_skipped"] for batch in loader)
    return skipped


def _named(error: Exception, manifest: Path, record: dict[str, Any]) -> bool:
    """A user-facing error: one of the project's named ones, pointing at the manifest line or the file."""
    from datamodules.manifest import BadRecordError, ManifestError
    from oneencoder.readers import MediaError

    message = str(error)
    points = manifest.name in message or any(str(v) in message for v in record.values() if isinstance(v, str))
    return isinstance(error, (BadRecordError, ManifestError, MediaError)) and points


def run_media_faults(work: Path, faults: list[MediaFault] = MEDIA_FAULTS) -> list[Outcome]:
    from datamodules.shapes import write_shapes_dataset

    pristine = write_shapes_dataset(work / "pristine", train_per_combo=1).parent
    outcomes = []
    for fault in faults:
        for cached in (False, True):
            for skip in (False, True):
                folder = Path(tempfile.mkdtemp(dir=work)) / "set"
                shutil.copytree(pristine, folder)
                manifest = folder / "manifest.jsonl"
                line = 0  # a training record: it has an image, a sound and a video
                record = json.loads(manifest.read_text().splitlines()[line])
                fault.breaks(manifest, record, line)
                setting = f"{'cached' if cached else 'online'}, skip_bad_records={skip}"
                outcomes.append(_media_outcome(fault, manifest, record, skip, folder / "features" if cached else None, setting))
    return outcomes


def _media_outcome(fault: MediaFault, manifest: Path, record: dict[str, Any], skip: bool, cache: Path | None,
                   setting: str) -> Outcome:
    try:
        skipped = _read_training_data(manifest, fault.modality, skip, cache)
    except Exception as error:  # noqa: BLE001 - what escapes is exactly what the suite grades
        named = _named(error, manifest, record)
        first_line = str(error).splitlines()[0][:160] if str(error) else ""
        result = f"{'named error' if named else 'crash'}: {type(error).__name__}: {first_line}"
        # A named error is right without skip_bad_records; with it, only a manifest that cannot be
        # read at all may still stop the run (there is no record to skip).
        unreadable_manifest = type(error).__name__ == "ManifestError"
        survived = named and not fault.benign and (not skip or unreadable_manifest)
        if not named:
            result += " | " + traceback.format_exc().strip().splitlines()[-3][:120]
        return Outcome("media", fault.name, setting, survived, result)
    if fault.benign:
        return Outcome("media", fault.name, setting, skipped == 0, f"trained as usual, skipped {skipped}")
    return Outcome("media", fault.name, setting, skip and skipped == 1,
                   f"skipped {skipped}" if skip else f"accepted silently (skipped {skipped})")


# --- kills --------------------------------------------------------------------------------------------


def _pipeline(root: Path, manifest: Path, output: str) -> Path:
    """Up -> align audio into `root/output`, with feature caches of its own (so a kill can hit their build)."""
    stages = []
    for name, stage, epochs in (("up", "up.yaml", 5), ("align-audio", "align_audio.yaml", 4)):
        path = root / f"{output}-{stage}"
        path.write_text(yaml.safe_dump(_stage_config(stage, manifest, root / f"{output}-features", epochs)))
        stages.append({"name": name, "config": str(path)})
    config = root / f"{output}.yaml"
    config.write_text(yaml.safe_dump({"output": str(root / output), "stages": stages}))
    return config


def _command(*words: str) -> list[str]:
    return [sys.executable, "-m", "stages.cli", *words]


def _environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _run_to_end(config: Path, attempts: int = 3) -> None:
    """Rerun until the pipeline finishes (a kill can land between two files a rerun must notice)."""
    for _ in range(attempts):
        result = subprocess.run(_command("pipeline", str(config)), env=_environment(), capture_output=True, text=True)
        if result.returncode == 0:
            return
    raise RuntimeError(f"{config} did not finish in {attempts} runs: {result.stderr.strip()[-600:]}")


def _progress(output: Path, features: Path) -> str:
    """Where a killed pipeline was: each stage's status, its cache and its checkpoint, as files show it."""
    parts = []
    for stage, cache in (("up", "features-up"), ("align-audio", "features-align_audio")):
        state = output / stage / "stage.json"
        status = json.loads(state.read_text())["status"] if state.is_file() else "not started"
        if status == "running":
            shards = len(list((features / cache).glob("*/shard-*.safetensors")))
            checkpoint = "last.ckpt written" if (output / stage / "checkpoints" / "last.ckpt").is_file() else "no checkpoint"
            status += f" ({shards} cache shards, {checkpoint})"
        parts.append(f"{stage} {status}")
    return ", ".join(parts)


def _final_weights(output: Path) -> dict[str, torch.Tensor]:
    return load_file(str(output / "align-audio" / "model.safetensors"))


def run_kills(work: Path, kills: int, seed: int = 0) -> list[Outcome]:
    """One uninterrupted run for the reference, then `kills` runs each killed once at a random moment
    (spread over the reference's duration, so cache builds, epochs and exports all get hit) and rerun."""
    from datamodules.shapes import write_shapes_dataset

    root = work / "kills"
    root.mkdir(parents=True, exist_ok=True)
    manifest = write_shapes_dataset(root / "data", train_per_combo=1)
    started = time.monotonic()
    reference_config = _pipeline(root, manifest, "reference")
    _run_to_end(reference_config, attempts=1)
    duration = time.monotonic() - started
    reference = _final_weights(root / "reference")
    rng = random.Random(seed)
    outcomes = []
    for attempt in range(kills):
        config = _pipeline(root, manifest, f"killed-{attempt}")
        delay = rng.uniform(0.05, 0.8) * duration
        process = subprocess.Popen(_command("pipeline", str(config)), env=_environment(), start_new_session=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            process.wait(timeout=delay)
            finished_first = True
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            finished_first = False
        where = _progress(root / f"killed-{attempt}", root / f"killed-{attempt}-features")
        try:
            _run_to_end(config)
            weights = _final_weights(root / f"killed-{attempt}")
            same = weights.keys() == reference.keys() and all(torch.equal(weights[k], reference[k]) for k in reference)
            result = "bit-identical" if same else "weights differ from the uninterrupted run"
        except Exception as error:  # noqa: BLE001
            same, result = False, f"rerun failed: {type(error).__name__}: {str(error)[:160]}"
        setting = f"killed at {delay:.1f} s of {duration:.1f} s: " + ("finished before the kill" if finished_first else where)
        outcomes.append(Outcome("kills", "SIGKILL of the pipeline's process group", setting, same, result))
    return outcomes


# --- concurrent cache builds --------------------------------------------------------------------------


def run_concurrent_cache(work: Path) -> list[Outcome]:
    """Two `oneencoder cache` builds of one config at once, then one alone into another folder."""
    from datamodules.feature_cache import FeatureCache
    from datamodules.shapes import write_shapes_dataset

    root = work / "concurrent"
    root.mkdir(parents=True, exist_ok=True)
    manifest = write_shapes_dataset(root / "data", train_per_combo=2)
    stage = _stage_config("up.yaml", manifest, root, 1)
    shared = root / "shared.yaml"
    shared.write_text(yaml.safe_dump(stage))
    stage["data"]["init_args"]["feature_cache"] = str(root / "alone")
    alone = root / "alone.yaml"
    alone.write_text(yaml.safe_dump(stage))
    builds = [subprocess.Popen(_command("cache", "--config", str(shared)), env=_environment(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [build.communicate() for build in builds]
    codes = [build.returncode for build in builds]
    subprocess.run(_command("cache", "--config", str(alone)), env=_environment(), check=True, capture_output=True)
    if any(codes):
        errors = " | ".join(err.strip().splitlines()[-1][:160] for (_, err), code in zip(results, codes) if code and err.strip())
        return [Outcome("concurrent cache", "two builds of one cache at once", "2 processes", False,
                        f"exit codes {codes}: {errors}")]
    differing = []
    for modality in ("image", "text"):
        built, reference = FeatureCache(root / "features-up" / modality), FeatureCache(root / "alone" / modality)
        if built.missing_shards or set(built.index) != set(reference.index):
            differing.append(f"{modality}: incomplete")
        elif not all(torch.equal(built[key], reference[key]) for key in reference.index):
            differing.append(f"{modality}: features differ")
    result = "one consistent cache, equal to a build alone" if not differing else "; ".join(differing)
    return [Outcome("concurrent cache", "two builds of one cache at once", "2 processes", not differing, result)]


# --- the report ---------------------------------------------------------------------------------------


def report(outcomes: list[Outcome]) -> str:
    lines = ["| part | fault | setting | survived | result |", "|---|---|---|---|---|"]
    lines += [f"| {o.part} | {o.fault} | {o.setting} | {'yes' if o.survived else 'NO'} | {o.result.replace('|', '/')} |"
              for o in outcomes]
    survived = sum(o.survived for o in outcomes)
    lines += ["", f"faults tried: {len(outcomes)}, survived: {survived}, lost: {len(outcomes) - survived}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=6, help="killed-and-resumed pipeline runs (0: none)")
    parser.add_argument("--parts", nargs="+", default=["media", "concurrent", "kills"],
                        choices=["media", "concurrent", "kills"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    import logging
    import warnings

    logging.disable(logging.WARNING)  # the skipped records' warnings are expected here
    warnings.filterwarnings("ignore")
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="oneencoder-faults-") as work:
        if "media" in args.parts:
            print(f"media faults: {len(MEDIA_FAULTS)} kinds x (online, cached) x (skip or not)", flush=True)
            outcomes += run_media_faults(Path(work))
        if "concurrent" in args.parts:
            print("concurrent cache builds", flush=True)
            outcomes += run_concurrent_cache(Path(work))
        if "kills" in args.parts and args.kills:
            print(f"kills: {args.kills} runs killed at random moments, each resumed", flush=True)
            outcomes += run_kills(Path(work), args.kills, args.seed)
    text = report(outcomes)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps([asdict(o) for o in outcomes], indent=2))
    return 0 if all(o.survived for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
