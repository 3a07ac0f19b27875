"""`oneencoder embed MODEL SOURCE OUT`: every item of a collection through a trained model, into an
embeddings folder (format: oneencoder/embeddings.py).

SOURCE is a manifest (every split, or `--split`) or a plain folder, whose files are sorted into
modalities by extension (EXTENSIONS; a .txt file holds one caption per non-empty line) and named by
their path relative to it. Items go into fixed ranges of `items_per_shard`, one shard file each, and
batches never cross a shard: a killed run, run again with the same arguments, encodes only the
shards that are missing. embeddings.json is written first, with the plan (model fingerprint, items,
reading settings), so that a resumed run over another model or source is refused instead of mixing
two sets of vectors; it is finalised with the counts at the end. Edits to files that keep their
paths are not noticed by a resumed run: `--overwrite` starts again.

With `--feature_cache`, items a stage's feature cache holds (same record key, same file content or
caption) are projected from their cached encoder features and never read or encoded; the others
are encoded from their files. A cache made by another encoder or preprocessing is refused, never
silently passed over. Bad items (a missing or undecodable file, an empty caption) are logged, listed
in embeddings.json under `skipped` and counted: the run goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from jsonargparse import ArgumentParser
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from datamodules.feature_cache import HEADER_NAME as CACHE_HEADER
from datamodules.feature_cache import (
    FeatureCache,
    ReadingCollator,
    ReadingDataset,
    StaleCacheError,
    caption_key,
    pad_features,
    signable,
    signature_memo,
    sources,
)
from datamodules.manifest import SPLITS, BadRecordError, Record, read_manifest
from oneencoder.embeddings import (
    FORMAT,
    FORMAT_VERSION,
    HEADER_NAME,
    EmbeddingsFolderError,
    Shard,
    read_header,
    read_shard,
    shard_done,
    shard_paths,
    write_header,
    write_shard,
)
from oneencoder.files import exclusive_lock
from oneencoder.model import OneEncoder
from oneencoder.readers import DEFAULT_MAX_PIXELS, Reader, build_reader

log = logging.getLogger(__name__)

EXTENSIONS = {
    **dict.fromkeys((".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"), "image"),
    **dict.fromkeys((".wav", ".flac", ".mp3", ".ogg", ".m4a"), "audio"),
    **dict.fromkeys((".mp4", ".avi", ".mov", ".mkv", ".webm"), "video"),
    ".txt": "text",
}
LOCK_NAME = ".embed.lock"
# What a resumed run must share with the run that started the folder.
PLAN_KEYS = {"model_fingerprint": "model", "dim": "embedding size", "items_per_shard": "--items_per_shard",
             "reader": "reading settings (--video_backend, --max_image_pixels)", "plan": "items"}


@dataclass(frozen=True)
class EmbedSettings:
    """How `embed_collection` reads and encodes; `modalities` None: all the model's."""

    modalities: list[str] | None = None
    split: str | None = None
    batch_size: int = 64
    items_per_shard: int = 1024
    num_workers: int = 0
    feature_cache: str | dict[str, str] | None = None
    video_backend: str = "decord"
    max_image_pixels: int | None = DEFAULT_MAX_PIXELS
    device: str | None = None
    overwrite: bool = False


@dataclass(frozen=True)
class Item:
    """One thing to embed: `value` is the caption or the media file; `row` what its shard records;
    `name` what a skip is listed under (the file, or a caption's id); `problem` a reason to skip it
    known before reading (an empty caption, a media field that is no path)."""

    id: str
    value: Any
    row: dict[str, Any]
    name: str
    problem: str | None = None

    @property
    def cache_key(self) -> str:
        """Its key in a feature cache: a caption's content (captions are shared), a media item's id."""
        return caption_key(self.value) if isinstance(self.value, str) else self.id


def text_key(owner: str, caption_index: int) -> str:
    """A caption's id in the embeddings: its record's (or caption file's) id and its place there."""
    return f"{owner}#{caption_index}"


# --- what to embed ------------------------------------------------------------------------------------


def manifest_items(records: Sequence[Record], modality: str) -> list[Item]:
    """The records' items of `modality` in manifest order, captions one by one (each with its own id,
    `<record>#<index>`, even where records share a caption)."""
    items = []
    for record in records:
        if modality not in record.fields:
            continue
        about = {"record": record.id, "split": record.split}
        if modality == "text":
            value = record.fields["text"]
            captions = value if isinstance(value, list) and value else [value]
            for index, caption in enumerate(captions):
                key = text_key(record.id, index)
                if isinstance(caption, str) and caption.strip():
                    row = {"id": key, "modality": "text", "source": caption, **about, "caption": caption}
                    items.append(Item(key, caption, row, key))
                else:
                    items.append(Item(key, None, {}, key, f"{record.where()}: empty caption {caption!r}"))
            continue
        try:
            path = record.path(modality).absolute()
        except BadRecordError as error:
            items.append(Item(record.id, None, {}, record.where(), str(error)))
            continue
        row = {"id": record.id, "modality": modality, "source": str(path), **about}
        items.append(Item(record.id, path, row, str(path)))
    return items


def folder_items(folder: Path, modalities: Sequence[str], exclude: Path | None = None) -> dict[str, list[Item]]:
    """Files under `folder` sorted into `modalities` by extension, named by their relative path
    (hidden files and folders, and `exclude`, left out); a .txt file gives one caption per non-empty line."""
    items: dict[str, list[Item]] = {modality: [] for modality in modalities}
    for root, folders, files in os.walk(folder):
        folders[:] = [f for f in folders if not f.startswith(".") and (Path(root) / f).resolve() != exclude]
        for name in files:
            modality = EXTENSIONS.get(Path(name).suffix.lower())
            if name.startswith(".") or modality not in items:
                continue
            path = (Path(root) / name).absolute()
            relative = path.relative_to(folder.absolute()).as_posix()
            if modality == "text":
                items["text"] += _caption_file_items(path, relative)
            else:
                items[modality].append(Item(relative, path, {"id": relative, "modality": modality,
                                                             "source": str(path)}, str(path)))
    return {modality: sorted(found, key=lambda item: item.id) for modality, found in items.items()}


def _caption_file_items(path: Path, relative: str) -> list[Item]:
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (UnicodeDecodeError, OSError) as error:
        return [Item(relative, None, {}, str(path), f"cannot read captions from {path}: {error}")]
    captions = [line for line in lines if line]
    return [Item(text_key(relative, index), caption,
                 {"id": text_key(relative, index), "modality": "text", "source": caption, "record": relative,
                  "caption": caption}, text_key(relative, index))
            for index, caption in enumerate(captions)]


def plan_items(source: Path, modalities: Sequence[str], split: str | None,
               out: Path) -> tuple[dict[str, list[Item]], list[Record] | None]:
    """{modality: items} from a manifest or a folder, and the manifest's records (None for a folder)."""
    if source.is_dir():
        if split is not None:
            raise ValueError(f"--split {split} needs a manifest; {source} is a folder, which has no splits")
        return folder_items(source, modalities, out.resolve()), None
    records = read_manifest(source)
    if split is not None:
        if split not in SPLITS:
            raise ValueError(f"--split must be one of {SPLITS} (got {split!r})")
        records = [record for record in records if record.split == split]
    return {modality: manifest_items(records, modality) for modality in modalities}, records


# --- the feature cache ----------------------------------------------------------------------------------


@dataclass
class CachedItems:
    """One modality's feature cache and the cache keys of the items it serves as they are now."""

    cache: FeatureCache
    served: set[str] = field(default_factory=set)


def open_caches(feature_cache: str | dict[str, str], records: list[Record] | None, model: OneEncoder,
                modalities: Sequence[str], video_backend: str) -> dict[str, CachedItems]:
    """Per modality with a cache: that cache (refused when another encoder or preprocessing made it)
    and the items whose key and signature (file content, caption) it holds."""
    if records is None:
        raise ValueError("--feature_cache keys features by manifest record ids; give the manifest the cache was"
                         " built from as SOURCE, or drop --feature_cache to embed the folder from its files")
    caches = {}
    for modality in modalities:
        folder = _cache_folder(feature_cache, modality)
        if folder is None:
            continue
        cache = FeatureCache(folder)
        try:
            cache.check_encoder(model.encoders[modality], video_backend)  # in whatever precision it ran in
        except StaleCacheError as error:
            raise StaleCacheError(f"--feature_cache: {error} Or drop --feature_cache to encode every item from its"
                                  " file.") from None
        caches[modality] = CachedItems(cache)
        if cache.missing_shards:
            log.warning("%s is unfinished (%d of %d shards missing): its items are encoded from their files;"
                        " finish it with `oneencoder cache`", folder, len(cache.missing_shards), cache.num_shards)
            continue
        caches[modality].served = cache.served(sources(signable(records, modality), modality, signature_memo(folder)))
    if not caches:
        raise FileNotFoundError(f"--feature_cache {feature_cache} holds no cache for {list(modalities)} (expected"
                                f" <folder>/<modality>/{CACHE_HEADER}, as a stage's `feature_cache` has it)")
    return caches


def _cache_folder(feature_cache: str | dict[str, str], modality: str) -> Path | None:
    """A {modality: folder} mapping names its modalities' folders (a named one must exist); one folder
    serves the modalities it has a cache for."""
    if isinstance(feature_cache, dict):
        return Path(feature_cache[modality]) / modality if modality in feature_cache else None
    folder = Path(feature_cache) / modality
    return folder if (folder / CACHE_HEADER).is_file() else None


# --- encoding ------------------------------------------------------------------------------------------


@dataclass
class _Job:
    """One modality's embedding run: its model, reader, cache and settings."""

    model: OneEncoder
    modality: str
    reader: Reader | None
    cached: CachedItems | None
    settings: EmbedSettings
    device: torch.device


def _known_problem(item: Item, reader: Reader | None) -> str | None:
    """Why an item cannot be embedded, known before decoding it: its own problem, or a missing file."""
    if item.problem is None and reader is not None and not item.value.is_file():
        return f"file not found: {item.value}"
    return item.problem


@torch.no_grad()
def _embed_shard(job: _Job, chunk: list[Item], progress: tqdm) -> Shard:
    """One shard's items -> their embeddings, in order, less the items skipped."""
    model, modality, size = job.model, job.modality, job.settings.batch_size
    vectors: dict[int, Tensor] = {}
    served = job.cached.served if job.cached else set()
    cached = [i for i, item in enumerate(chunk) if item.cache_key in served]
    for start in range(0, len(cached), size):
        batch = cached[start : start + size]
        padded = pad_features([job.cached.cache[chunk[i].cache_key] for i in batch])
        projected = model.project(modality, padded["features"].to(job.device), padded["mask"].to(job.device))
        vectors.update(zip(batch, projected.float().cpu()))
        progress.update(len(batch))
    positions = [i for i, item in enumerate(chunk) if item.cache_key not in served]
    online = [chunk[i] for i in positions]
    problems = [_known_problem(item, job.reader) for item in online]
    dataset = ReadingDataset([item.value for item in online], job.reader, problems)
    loader = DataLoader(dataset, batch_size=size, num_workers=job.settings.num_workers,
                        collate_fn=ReadingCollator(model.encoders[modality].preprocessor))
    skipped = {}
    for kept, inputs, failed in loader:
        for index, problem in failed.items():
            log.warning("skipping %s: %s", online[index].name, problem)
            skipped[online[index].name] = problem
        if inputs is not None:
            encoded = model.encode(modality, {name: tensor.to(job.device) for name, tensor in inputs.items()})
            projected = model.project(modality, encoded.features, encoded.mask)
            vectors.update(zip([positions[i] for i in kept], projected.float().cpu()))
        progress.update(len(kept) + len(failed))
    order = sorted(vectors)
    table = torch.stack([vectors[i] for i in order]) if order else torch.empty(0, model.config.embed_dim)
    return Shard(table, [chunk[i].row for i in order], skipped, len(cached))


def _embed_modality(out: Path, job: _Job, items: list[Item]) -> dict[str, Any]:
    """Write the modality's missing shards; its summary over all of them."""
    per_shard = job.settings.items_per_shard
    chunks = [items[start : start + per_shard] for start in range(0, len(items), per_shard)]
    todo = [index for index in range(len(chunks)) if not shard_done(out, job.modality, index)]
    if len(todo) < len(chunks):
        log.info("%s/%s: %d of %d shards already written, kept", out, job.modality, len(chunks) - len(todo),
                 len(chunks))
    with tqdm(total=sum(len(chunks[i]) for i in todo), desc=f"embedding {job.modality}", unit="item") as progress:
        for index in todo:
            write_shard(out, job.modality, index, _embed_shard(job, chunks[index], progress))
    shards = [read_shard(out, job.modality, index, vectors=False) for index in range(len(chunks))]
    return {"items": sum(len(s.rows) for s in shards), "shards": len(chunks),
            "from_cache": sum(s.from_cache for s in shards),
            "skipped": {name: reason for s in shards for name, reason in s.skipped.items()}}


# --- the output folder ----------------------------------------------------------------------------------


def _plan_header(model_folder: str, source: str, model: OneEncoder, items: dict[str, list[Item]],
                 settings: EmbedSettings) -> dict[str, Any]:
    def digest(found: list[Item]) -> str:
        listed = json.dumps([[item.id, item.name, item.row.get("source")] for item in found])
        return hashlib.sha256(listed.encode()).hexdigest()[:32]

    reader: dict[str, Any] = {"max_image_pixels": settings.max_image_pixels} if "image" in items else {}
    if "video" in items:
        reader["video_backend"] = settings.video_backend
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "model": str(model_folder),
            "model_fingerprint": model.fingerprint(), "dim": model.config.embed_dim, "source": str(source),
            "complete": False, "items_per_shard": settings.items_per_shard, "reader": reader,
            "plan": {m: {"items": len(found), "digest": digest(found)} for m, found in items.items()},
            "modalities": {}}


def _check_foreign(out: Path) -> None:
    """Never write into a folder that holds other things than an embeddings run."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file; give a folder (new or empty) for the embeddings")
    if out.is_dir() and not (out / HEADER_NAME).is_file() and any(p.name != LOCK_NAME for p in out.iterdir()):
        raise FileExistsError(f"{out} is not empty and holds no {HEADER_NAME}: give a new or empty folder for the"
                              " embeddings")


def _start(out: Path, header: dict[str, Any], overwrite: bool) -> None:
    """Resume a run with the same plan, refuse one with another (unless `overwrite`), or begin."""
    if (out / HEADER_NAME).is_file():
        old = read_header(out)
        differs = [name for key, name in PLAN_KEYS.items() if old.get(key) != header[key]]
        if differs and not overwrite:
            raise EmbeddingsFolderError(
                f"{out} holds embeddings of another run (model {old.get('model')} {old.get('model_fingerprint')},"
                f" source {old.get('source')}); now model {header['model']} {header['model_fingerprint']}, source"
                f" {header['source']}. What differs: {', '.join(differs)}. Give another output folder, or"
                " --overwrite to delete those embeddings and start again"
            )
        if overwrite:
            _remove_shards(out, set(old.get("plan", {})) | set(header["plan"]))
    write_header(out, header)


def _remove_shards(out: Path, modalities: set[str]) -> None:
    for modality in modalities:
        folder = shard_paths(out, modality, 0)[0].parent
        for path in [*folder.glob("shard-*.safetensors"), *folder.glob("shard-*.jsonl")]:
            path.unlink()
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _refuse_second_run(holder: str) -> None:
    raise FileExistsError(f"another `oneencoder embed` (pid {holder}) is writing this folder; wait for it to finish,"
                          " or give another folder")


def embed_collection(model_folder: str | os.PathLike[str], source: str | os.PathLike[str],
                     out: str | os.PathLike[str], settings: EmbedSettings | None = None) -> dict[str, Any]:
    """Embed every item of `source` into `out` (resuming an interrupted run); the final embeddings.json."""
    settings = settings or EmbedSettings()
    model = OneEncoder.from_pretrained(model_folder)
    device = torch.device(settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device).eval()
    modalities = settings.modalities or model.modalities
    unknown = [m for m in modalities if m not in model.modalities]
    if unknown:
        raise ValueError(f"--modality {unknown}: the model {model_folder} has {model.modalities}")
    if settings.items_per_shard < 1 or settings.batch_size < 1:
        raise ValueError(f"--items_per_shard and --batch_size must be positive (got {settings.items_per_shard},"
                         f" {settings.batch_size})")
    out = Path(out)
    planned, records = plan_items(Path(source), modalities, settings.split, out)
    for modality in [m for m, found in planned.items() if not found]:
        log.info("%s has no %s items", source, modality)
    planned = {m: found for m, found in planned.items() if found}
    if not planned:
        raise ValueError(f"{source} holds no items of {list(modalities)}: give a manifest with those fields, or a"
                         f" folder with files ending in {sorted(EXTENSIONS)}")
    header = _plan_header(str(model_folder), str(source), model, planned, settings)
    _check_foreign(out)
    out.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out / LOCK_NAME, _refuse_second_run):
        _start(out, header, settings.overwrite)
        caches = (open_caches(settings.feature_cache, records, model, list(planned), settings.video_backend)
                  if settings.feature_cache is not None else {})
        summaries = {}
        for modality, found in planned.items():
            reader = None if modality == "text" else build_reader(
                modality, model.encoders[modality].preprocessor, settings.video_backend, settings.max_image_pixels)
            job = _Job(model, modality, reader, caches.get(modality), settings, device)
            summaries[modality] = _embed_modality(out, job, found)
        header = {**header, "complete": True, "modalities": summaries}
        write_header(out, header)
    return header


# --- the command ----------------------------------------------------------------------------------------


def embed_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="oneencoder embed",
        description="Embed every item of a manifest or a folder with a trained model, into safetensors"
        " shards + JSON Lines rows (see oneencoder/embeddings.py); run it again to resume after a kill.",
    )
    parser.add_argument("model", help="a stage's output folder (config.json + model.safetensors)")
    parser.add_argument("source", help="a JSON Lines manifest, or a folder whose files are sorted into modalities"
                        " by extension (.txt: one caption per non-empty line)")
    parser.add_argument("out", help="the embeddings folder to write (new, or an interrupted run's to resume)")
    parser.add_argument("--modality", nargs="+", action="extend", default=None,
                        help="the modalities to embed, repeated or several at once (default: all the model's)")
    parser.add_argument("--split", type=Optional[str], default=None, help="a manifest's split (default: all)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--items_per_shard", type=int, default=1024,
                        help="items per shard file: what a killed run loses at most, per modality")
    parser.add_argument("--num_workers", type=int, default=0, help="dataloader processes decoding media")
    parser.add_argument("--feature_cache", type=Optional[Union[str, dict[str, str]]], default=None,
                        help="a stage's feature cache: a folder of <modality>/ caches, or {modality: folder}; the"
                        " items it holds are projected from it instead of encoded")
    parser.add_argument("--video_backend", default="decord")
    parser.add_argument("--max_image_pixels", type=Optional[int], default=DEFAULT_MAX_PIXELS,
                        help="larger images are skipped as bad (decompression bombs); null: no limit")
    parser.add_argument("--device", type=Optional[str], default=None, help="default: cuda when present, else cpu")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the embeddings OUT holds (another model's or source's) and start again")
    return parser


def embed_command(argv: Sequence[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = embed_parser().parse_args(list(argv))
    settings = EmbedSettings(args.modality, args.split, args.batch_size, args.items_per_shard, args.num_workers,
                             args.feature_cache, args.video_backend, args.max_image_pixels, args.device,
                             args.overwrite)
    print(summary(embed_collection(args.model, args.source, args.out, settings), args.out))


def summary(header: dict[str, Any], out: str, listed: int = 10) -> str:
    """Items per modality, how many came from the feature cache, and the skipped items (the first few)."""
    lines = [f"embeddings of {header['model']} ({header['model_fingerprint']}) in {out}:"]
    for modality, counts in header["modalities"].items():
        lines.append(f"  {modality}: {counts['items']} items ({counts['from_cache']} from the feature cache),"
                     f" {len(counts['skipped'])} skipped")
    skipped = [(name, reason) for counts in header["modalities"].values() for name, reason in counts["skipped"].items()]
    if skipped:
        lines.append(f"skipped ({len(skipped)}, all listed in {Path(out) / HEADER_NAME}):")
        lines += [f"  {name}: {reason}" for name, reason in skipped[:listed]]
    return "\n".join(lines)
