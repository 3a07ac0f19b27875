"""A real (if small) offline set from the OpenMoji npm package: per emoji its drawing as an image,
its name spoken by espeak-ng as a sound and captions from its name and tags; for some emoji a short
clip of the drawing panning, zooming or rotating, captioned with the motion. Beside the manifest,
av_events.jsonl pairs each clip with its emoji's spoken name and captions: audio-visual events for
the codebook stage, labelled by the emoji's group.

Everything derives from the package and the seed, so a build is reproducible without a network
beyond `npm pack`: the same settings give byte-identical files, and a second run rewrites nothing.
Splits are by emoji, so no drawing, sound or name is shared between train, val and test.
Needs librsvg (drawing, in-process: svg.py) and `espeak-ng` (Debian: `apt-get install librsvg2-bin espeak-ng`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import soundfile
import torch
from PIL import Image
from tqdm import tqdm

from oneencoder.readers import resample

from .manifest import SPLITS, read_manifest
from .npm import fetch_package
from .shapes import write_video
from .svg import SvgError, check_library, draw_png

log = logging.getLogger(__name__)

OPENMOJI_VERSION = "17.0.0"
VIDEO_PER_SPLIT: Mapping[str, int] = {"train": 600, "val": 60, "test": 120}
SPLIT_SHARES = (("train", 0.7), ("val", 0.1), ("test", 0.2))
DROPPED_GROUPS = ("component", "extras-openmoji", "extras-unicode")  # parts and non-Unicode extras
READABLE_GROUPS = {
    "smileys-emotion": "smileys and emotion",
    "people-body": "people and body",
    "animals-nature": "animals and nature",
    "food-drink": "food and drink",
    "travel-places": "travel and places",
}
TAGS_PER_CAPTION = 3
AV_EVENTS_NAME = "av_events.jsonl"  # beside manifest.jsonl: one record per clip, with its emoji's sound

SAMPLING_RATE = 16000
VOICES = ("en-us", "en-gb", "en-gb-x-rp", "en-us+f3", "en-gb+m3", "en-029", "en-us+f2", "en-gb-scotland")
SPEEDS = (140, 150, 160, 170, 180, 190)  # words per minute

CLIP_FPS = 8
MOTIONS = {  # motion -> how captions say it
    "pan left": "panning left",
    "pan right": "panning right",
    "pan up": "panning up",
    "pan down": "panning down",
    "zoom in": "zooming in",
    "zoom out": "zooming out",
    "rotate clockwise": "rotating clockwise",
    "rotate counterclockwise": "rotating counterclockwise",
}
PAN_SCALE = 0.6  # a pan moves the emoji at this size from one side of the frame to the other
ZOOM_SCALES = (0.4, 1.0)
ROTATION_DEGREES = 120.0
# Least mean |first - last frame| (0..1, at 32 x 32) for a motion to count as visible: in the package it
# refuses only round or symmetric symbols rotating (circles 0.0005, the sun 0.002; the face without a
# mouth turns its eyes, 0.008); the faintest pan (the small "dim button") changes 0.019.
VISIBLE = 0.005
COMPARED_SIDE = 32  # frames shrink to this before comparing, so rotated edges do not count as motion
WHITE = (255, 255, 255)

TOOLS_HINT = "install the tools: `apt-get install librsvg2-bin espeak-ng` (Debian/Ubuntu)"
HEXCODE = re.compile(r"[0-9A-F]+(-[0-9A-F]+)*")


class OpenMojiError(RuntimeError):
    """The build cannot go on: a missing tool or package file, a failing tool call, or a root built
    with other settings."""


@dataclass(frozen=True)
class Emoji:
    hexcode: str
    annotation: str
    group: str
    tags: tuple[str, ...]

    @property
    def where(self) -> str:
        return f"emoji {self.hexcode} ({self.annotation!r})"


# --- the package ---------------------------------------------------------------------------------


def fetch_openmoji(downloads: Path) -> Path:
    """The extracted OpenMoji package under `downloads`, `npm pack`ed there once."""
    return fetch_package(downloads, "openmoji", OPENMOJI_VERSION, OpenMojiError,
                         "pass `--package` with an extracted openmoji package folder")


def load_emoji(package: Path) -> list[Emoji]:
    """The package's emoji worth a record: no skin-tone variants (near-duplicates of their base),
    no components or OpenMoji extras, and a name to caption and speak."""
    package = Path(package)
    data_file = package / "data" / "openmoji.json"
    if not data_file.is_file():
        raise OpenMojiError(
            f"{data_file} not found: pass the `package` folder of an extracted `npm pack openmoji@{OPENMOJI_VERSION}`"
        )
    _check_version(package)
    entries = json.loads(data_file.read_text(encoding="utf-8"))
    skipped: Counter[str] = Counter()
    kept: dict[str, Emoji] = {}
    for entry in entries:
        reason = _skip_reason(entry)
        if reason:
            skipped[reason] += 1
            continue
        hexcode = entry["hexcode"]
        if not HEXCODE.fullmatch(hexcode) or hexcode in kept:
            raise OpenMojiError(f"{data_file}: hexcode {hexcode!r} is malformed or repeated")
        tags = tuple(tag.strip().lower() for tag in entry["tags"].split(",") if tag.strip())
        kept[hexcode] = Emoji(hexcode, entry["annotation"].strip().lower(), entry["group"], tags)
    log.info("openmoji: kept %d of %d emoji; skipped %s", len(kept), len(entries), dict(skipped) or "none")
    return list(kept.values())


def _check_version(package: Path) -> None:
    manifest = package / "package.json"
    if manifest.is_file():
        version = json.loads(manifest.read_text(encoding="utf-8")).get("version")
        if version != OPENMOJI_VERSION:
            raise OpenMojiError(
                f"{manifest} is openmoji {version}; this builder is for {OPENMOJI_VERSION}:"
                f" use `npm pack openmoji@{OPENMOJI_VERSION}`"
            )


def _skip_reason(entry: Mapping[str, Any]) -> str | None:
    if entry["skintone"] != "":
        return "skin-tone variant"
    if entry["group"] in DROPPED_GROUPS:
        return entry["group"]
    if not entry["annotation"].strip():
        return "no annotation"
    return None


# --- deterministic choices -----------------------------------------------------------------------


def seeded_unit(seed: int, purpose: str, key: str) -> float:
    """A number in [0, 1) fixed by (seed, purpose, key): the same on every machine and run."""
    digest = hashlib.sha256(f"{seed}/{purpose}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _pick(options: tuple[Any, ...], seed: int, purpose: str, hexcode: str) -> Any:
    return options[int(seeded_unit(seed, purpose, hexcode) * len(options))]


def split_of(seed: int, concept: str) -> str:
    """About 70% train, 10% val, 20% test, by concept (an emoji's hexcode)."""
    point, edge = seeded_unit(seed, "split", concept), 0.0
    for split, share in SPLIT_SHARES:
        edge += share
        if point < edge:
            return split
    return SPLIT_SHARES[-1][0]


def group_words(group: str) -> str:
    """'food-drink' -> 'food and drink': the group as a label a text encoder can read."""
    return READABLE_GROUPS.get(group, group.replace("-", " "))


def captions(emoji: Emoji) -> list[str]:
    """The name, the name as an emoji, and the name with a few of its tags (when it has new ones)."""
    lines = [emoji.annotation, f"an emoji of {emoji.annotation}"]
    words = set(emoji.annotation.split())
    extra = [tag for tag in emoji.tags if tag != emoji.annotation and tag not in words][:TAGS_PER_CAPTION]
    if extra:
        lines.append(f"{emoji.annotation} emoji: {', '.join(extra)}")
    return lines


# --- files ---------------------------------------------------------------------------------------


def partial_path(path: Path) -> Path:
    """Where `path` is written before it is renamed into place; keeps the suffix (writers go by it)."""
    return path.with_name(f".{path.stem}.part{path.suffix}")


def run_tool(command: list[str], what: str, target: Path, stdin: str | None = None) -> None:
    """`command` (a tool writing `target` for `what`), its failure raised with the tool's message."""
    result = subprocess.run(command, input=stdin, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise OpenMojiError(f"{what}: `{' '.join(command)}` failed writing {target}: {result.stderr.strip()}")


def check_tools() -> None:
    """Fails before any work is done when a tool is missing, naming the packages to install."""
    try:
        check_library()
    except SvgError as error:
        raise OpenMojiError(f"{error}; {TOOLS_HINT}") from None
    if shutil.which("espeak-ng") is None:
        raise OpenMojiError(f"espeak-ng not found: {TOOLS_HINT}")


@dataclass(frozen=True)
class Job:
    """One emoji's files to make, and the settings they depend on."""

    emoji: Emoji
    split: str
    package: Path
    root: Path
    seed: int
    size: int
    frames: int

    @property
    def image(self) -> Path:
        return self.root / "images" / f"{self.emoji.hexcode}.png"

    @property
    def audio(self) -> Path:
        return self.root / "audio" / f"{self.emoji.hexcode}.wav"

    def video(self, motion: str) -> Path:
        return self.root / "video" / f"{self.emoji.hexcode}-{motion.replace(' ', '-')}.mp4"


def draw_svg(svg: Path | str, target: Path, size: int, what: str) -> bool:
    """`svg` (a file, or a document's text) drawn at size x size on white into the PNG `target`, as
    `rsvg-convert` draws it (svg.py); False when it was already there."""
    if target.exists():
        return False
    partial = partial_path(target)
    document = svg.read_bytes() if isinstance(svg, Path) else svg.encode()
    try:
        draw_png(document, partial, size)
    except SvgError as error:
        source = svg if isinstance(svg, Path) else "its SVG document"
        raise OpenMojiError(f"{what}: librsvg failed drawing {source} into {target}: {error}") from None
    partial.replace(target)
    return True


def rasterise(job: Job) -> bool:
    """The emoji's drawing from the package; False when the PNG was already there."""
    svg = job.package / "color" / "svg" / f"{job.emoji.hexcode}.svg"
    if not job.image.exists() and not svg.is_file():
        raise OpenMojiError(f"emoji {job.emoji.hexcode}: {svg} not found; the package is incomplete, extract it again")
    return draw_svg(svg, job.image, job.size, job.emoji.where)


def speak(job: Job) -> bool:
    """The name spoken in the emoji's voice and speed, as 16 kHz mono 16-bit PCM; False when the
    WAV was already there."""
    if job.audio.exists():
        return False
    emoji = job.emoji
    voice, speed = _pick(VOICES, job.seed, "voice", emoji.hexcode), _pick(SPEEDS, job.seed, "speed", emoji.hexcode)
    raw = partial_path(job.audio).with_suffix(".raw.wav")
    # The name on stdin: a name starting with '-' must not read as an option.
    run_tool(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), "--stdin"], emoji.where, job.audio,
             emoji.annotation)
    waveform, rate = soundfile.read(raw, dtype="float32", always_2d=True)
    raw.unlink()
    mono = torch.from_numpy(waveform.mean(axis=1))
    resampled = resample(mono, rate, SAMPLING_RATE).clamp(-1.0, 1.0).numpy()
    partial = partial_path(job.audio)
    soundfile.write(partial, resampled, SAMPLING_RATE, subtype="PCM_16", format="WAV")
    partial.replace(job.audio)
    return True


def render(emoji: Image.Image, motion: str, t: float) -> Image.Image:
    """The drawing at time `t` (0 to 1) of `motion`, on a white canvas of its own size."""
    size = emoji.width
    kind, direction = motion.split()
    if kind == "rotate":
        angle = ROTATION_DEGREES * t * (-1 if direction == "clockwise" else 1)  # PIL turns counterclockwise
        return emoji.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=WHITE)
    if kind == "zoom":
        low, high = ZOOM_SCALES
        side = round(size * (low + (high - low) * (t if direction == "in" else 1 - t)))
        x = y = (size - side) / 2
    else:
        side = round(size * PAN_SCALE)
        travel = size - side
        progress = t if direction in ("right", "down") else 1 - t
        x, y = (travel * progress, travel / 2) if direction in ("left", "right") else (travel / 2, travel * progress)
    canvas = Image.new("RGB", (size, size), WHITE)
    canvas.paste(emoji.resize((side, side), Image.Resampling.LANCZOS), (round(x), round(y)))
    return canvas


def _change(first: Image.Image, last: Image.Image) -> float:
    small = [np.asarray(frame.resize((COMPARED_SIDE,) * 2, Image.Resampling.BOX), dtype=np.float32)
             for frame in (first, last)]
    return float(np.abs(small[0] - small[1]).mean() / 255)


def choose_motion(emoji: Image.Image, seed: int, hexcode: str) -> str:
    """The emoji's motion: the first in a per-emoji order that visibly changes the drawing (a round
    symbol rotating does not)."""
    order = sorted(MOTIONS, key=lambda motion: seeded_unit(seed, f"motion {motion}", hexcode))
    for motion in order:
        if _change(render(emoji, motion, 0.0), render(emoji, motion, 1.0)) >= VISIBLE:
            return motion
    raise OpenMojiError(f"emoji {hexcode}: no motion visibly changes its drawing; is the image blank?")


def animate(job: Job) -> tuple[str, bool]:
    """The emoji's clip; returns its motion and whether the MP4 was written (False: already there)."""
    with Image.open(job.image) as opened:
        drawing = opened.convert("RGB")
    motion = choose_motion(drawing, job.seed, job.emoji.hexcode)
    target = job.video(motion)
    if target.exists():
        return motion, False
    times = np.linspace(0.0, 1.0, job.frames)
    partial = partial_path(target)
    write_video(partial, [np.asarray(render(drawing, motion, float(t))) for t in times], CLIP_FPS)
    partial.replace(target)
    return motion, True


def run_all(phase: str, work: Callable[[Any], Any], jobs: Sequence[Any], workers: int) -> list[Any]:
    """`work` over `jobs` in `workers` threads (the heavy parts are subprocesses and C code), with a
    progress bar; the first failure cancels what has not started and is raised."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(work, job) for job in jobs]
        try:
            for future in tqdm(as_completed(futures), total=len(futures), desc=phase, unit="file"):
                future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return [future.result() for future in futures]


def _log_written(phase: str, written: Iterable[bool]) -> None:
    flags = list(written)
    log.info("openmoji %s: wrote %d, skipped %d already there", phase, sum(flags), len(flags) - sum(flags))


# --- the build -----------------------------------------------------------------------------------


def write_if_changed(path: Path, text: str) -> None:
    """Atomically, and not at all when the file already holds `text` (its mtime stays)."""
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    partial = partial_path(path)
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


def remove_partials(root: Path) -> None:
    """Files an interrupted build was writing (in `root` and its media folders): never finished, so
    never kept."""
    media = [path for folder in ("images", "audio", "video") for path in (root / folder).rglob(".*.part.*")]
    for partial in sorted([*root.glob(".*.part.*"), *media]):
        log.info("removing %s, left by an interrupted build", partial)
        partial.unlink()


def claim_root(root: Path, settings: dict[str, Any]) -> None:
    """Records the settings in build.json; a root built with other settings is refused, since its
    files would be kept and mixed with new ones."""
    record = root / "build.json"
    if record.is_file():
        before = json.loads(record.read_text(encoding="utf-8"))
        if before != settings:
            raise OpenMojiError(
                f"{root} was built with other settings ({record}: {before}; now: {settings}):"
                f" use another root, or delete {root} to rebuild it"
            )
    write_if_changed(record, json.dumps(settings, indent=2, sort_keys=True) + "\n")


def _check_settings(size: int, frames: int, video_per_split: Mapping[str, int], limit: int | None,
                    workers: int) -> None:
    if size <= 0 or size % 2:
        raise ValueError(f"size must be positive and even (got {size}): the videos are yuv420p, which needs even sides")
    if frames < 2:
        raise ValueError(f"frames must be at least 2 (got {frames}): a motion needs a first and a last frame")
    if set(video_per_split) - set(SPLITS) or any(count < 0 for count in video_per_split.values()):
        raise ValueError(f"video_per_split maps splits {SPLITS} to counts >= 0 (got {dict(video_per_split)})")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, or None for every emoji (got {limit})")
    if workers < 1:
        raise ValueError(f"workers must be at least 1 (got {workers})")


def build_openmoji(
    root: str | Path,
    package: str | Path | None = None,
    *,
    seed: int = 0,
    size: int = 224,
    video_per_split: Mapping[str, int] = VIDEO_PER_SPLIT,
    frames: int = 8,
    limit: int | None = None,
    workers: int = 2,
) -> Path:
    """Writes images/, audio/, video/, build.json, manifest.jsonl and AV_EVENTS_NAME under `root`
    from the OpenMoji package (fetched into `root`/downloads when `package` is None); returns the manifest. Resumes
    an interrupted build and rewrites nothing when everything is in place."""
    _check_settings(size, frames, video_per_split, limit, workers)
    check_tools()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    settings = {"version": OPENMOJI_VERSION, "seed": seed, "size": size, "frames": frames,
                "video_per_split": {split: video_per_split.get(split, 0) for split in SPLITS}, "limit": limit}
    claim_root(root, settings)
    remove_partials(root)
    package = fetch_openmoji(root / "downloads") if package is None else Path(package)
    _, records = openmoji_records(root, package, seed=seed, size=size, video_per_split=video_per_split,
                                  frames=frames, limit=limit, workers=workers)
    manifest = root / "manifest.jsonl"
    write_if_changed(manifest, "".join(json.dumps(record) + "\n" for record in records))
    write_av_events(manifest)
    return manifest


def openmoji_records(root: Path, package: Path, *, seed: int, size: int, video_per_split: Mapping[str, int],
                     frames: int, limit: int | None, workers: int) -> tuple[list[Emoji], list[dict[str, Any]]]:
    """Draws, speaks and animates the package's emoji under `root` (what is there already is kept);
    returns the emoji, in their seeded order, and their records: one per emoji, then the clips."""
    ranked = sorted(load_emoji(package), key=lambda emoji: seeded_unit(seed, "order", emoji.hexcode))[:limit]
    for folder in ("images", "audio", "video"):
        (root / folder).mkdir(exist_ok=True)
    jobs = [Job(emoji, split_of(seed, emoji.hexcode), package, root, seed, size, frames) for emoji in ranked]
    _log_written("images", run_all("images", rasterise, jobs, workers))
    _log_written("speech", run_all("speech", speak, jobs, workers))
    clip_jobs = _with_clips(jobs, video_per_split)
    motions = run_all("clips", animate, clip_jobs, workers)
    _log_written("clips", (written for _, written in motions))
    records = [_emoji_record(job) for job in jobs]
    records += [_clip_record(job, motion) for job, (motion, _) in zip(clip_jobs, motions)]
    return ranked, records


def _with_clips(jobs: list[Job], video_per_split: Mapping[str, int]) -> list[Job]:
    """The first `video_per_split[split]` emoji of each split, in the jobs' (seeded) order."""
    taken: Counter[str] = Counter()
    chosen = []
    for job in jobs:
        if taken[job.split] < video_per_split.get(job.split, 0):
            taken[job.split] += 1
            chosen.append(job)
    return chosen


def _emoji_record(job: Job) -> dict[str, Any]:
    emoji = job.emoji
    return {"id": emoji.hexcode, "split": job.split, "text": captions(emoji),
            "image": job.image.relative_to(job.root).as_posix(), "audio": job.audio.relative_to(job.root).as_posix(),
            "label": group_words(emoji.group)}


def _clip_record(job: Job, motion: str) -> dict[str, Any]:
    emoji, phrase = job.emoji, MOTIONS[motion]
    return {"id": f"{emoji.hexcode}/{motion.replace(' ', '_')}", "split": job.split,
            "text": [f"{emoji.annotation} {phrase}", f"an emoji of {emoji.annotation}, {phrase}"],
            "video": job.video(motion).relative_to(job.root).as_posix(), "label": group_words(emoji.group)}


def write_av_events(manifest: str | Path) -> Path:
    """Writes AV_EVENTS_NAME beside `manifest` (an OpenMoji manifest.jsonl) and returns it: per clip,
    in the manifest's order, its id, split, video and label with its emoji's spoken name as `audio`
    and the emoji's captions (what the sound says) as `text`. Derived from the manifest alone, so an
    existing build gets it without its tools; rewrites nothing when it is already current."""
    manifest = Path(manifest)
    records = read_manifest(manifest)
    emoji = {record.id: record for record in records if "video" not in record.fields}
    events = []
    for clip in (record for record in records if "video" in record.fields):
        hexcode = clip.id.rsplit("/", 1)[0]  # clip ids are HEXCODE/motion
        if hexcode not in emoji or "audio" not in emoji[hexcode].fields:
            raise OpenMojiError(
                f"{clip.where()}: clip of emoji {hexcode}, which has no record with `audio` in {manifest};"
                " the manifest is not an OpenMoji build: rebuild it with `oneencoder data openmoji`"
            )
        sound = emoji[hexcode].fields
        events.append({"id": clip.id, "split": clip.split, "text": sound["text"], "video": clip.fields["video"],
                       "audio": sound["audio"], "label": clip.fields["label"]})
    target = manifest.parent / AV_EVENTS_NAME
    write_if_changed(target, "".join(json.dumps(event) + "\n" for event in events))
    return target


def count_records(manifest: str | Path) -> dict[str, dict[str, int]]:
    """Per split, how many emoji records and clips the manifest holds (for the CLI's summary)."""
    counts = {split: {"emoji": 0, "clips": 0} for split in SPLITS}
    for record in read_manifest(manifest):
        counts[record.split]["clips" if "video" in record.fields else "emoji"] += 1
    return counts
