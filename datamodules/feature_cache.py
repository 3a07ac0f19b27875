"""Frozen-encoder features on disk: encode every record once, then train every epoch from the cache.

Layout, per modality: `<root>/<modality>/header.json` and `shard-00000.safetensors`, ... Each shard
holds `features` (tokens, dim), its items' token sequences back to back without padding, and
`lengths` (items,), with the items' keys and any skipped items in its metadata. Shards cover fixed
ranges of items and are written to a temporary name and renamed, so a shard file that exists is
complete, an interrupted build resumes at the first missing shard, and readers (dataloader workers,
DDP processes) only ever memory-map finished files. One build at a time holds the folder's lock file;
a second one waits for it, then finds the cache done.

Captions are keyed by their content (`caption_key`): a caption that several records share (templated
captions, one concept drawn in several styles) is encoded and stored once.

header.json records what made the features (the encoder's fingerprint and its description: weights
identity and preprocessing settings, the video backend, the storage dtype, the precision the encoder
ran in: bf16-mixed where the machine runs bf16 fast, see oneencoder/precision.py) and each source's
signature (a media file's path and content digest, see signatures.py; a caption's hash). A cache
made differently is refused with what differs, never used; a build over a cache whose files changed
or whose manifest gained records encodes again only the shards holding those items.

An image cache built with `augment` (see augment.py) holds view 0 of every image, keyed by the record
id: the plain image, which validation, testing and embedding read; and for the training images (only
training draws augmented views) views 1, 2, ... keyed `<id>@<view>`, each augmented with a seed fixed
by that key. The items are stored view after view, each view's in shards of its own, so view 0's
shards are exactly the shards of a cache without augmentation (a manifest grown by a shard's worth
renumbers the later views' shards, which are then encoded again); the header records the settings
under "reader" and each view's number of items under "view_sizes".
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from oneencoder.encoders import FrozenEncoder
from oneencoder.files import atomic_write_text, atomic_write_with, exclusive_lock
from oneencoder.precision import BF16, FP32, autocast
from oneencoder.readers import DEFAULT_MAX_PIXELS, MediaError, Reader, build_reader

from .augment import AugmentedView, AugmentingReader, ImageAugment, view_seed
from .manifest import BadRecordError, Record
from .signatures import SignatureMemo

log = logging.getLogger(__name__)

FORMAT = "oneencoder-feature-cache"
# 2: media signatures hold the path and a content digest; the video backend is recorded.
# 3: captions keyed by their content, each distinct caption encoded once; media caches as in 2, which
# are read as they are (a caption cache is cheap to rebuild, an image or video cache may take hours).
FORMAT_VERSION = 3
OLDEST_MEDIA_VERSION = 2
HEADER_NAME = "header.json"
LOCK_NAME = ".build.lock"
MEMO_NAME = "signatures.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ITEMS_PER_SHARD = 512
CACHE_COMMAND = "`oneencoder cache --config <your stage config>`"


class StaleCacheError(RuntimeError):
    """A feature cache exists but does not match the current encoder, storage settings or files.
    `reason` is what does not match, without the advice on fixing it (for callers that do not need it
    fixed: an evaluation that encodes instead)."""

    def __init__(self, reason: str, fix: str = "") -> None:
        super().__init__(f"{reason}{fix}")
        self.reason = reason


class CorruptCacheError(StaleCacheError):
    """A shard file exists but cannot be read (truncated or damaged after it was written)."""


@dataclass(frozen=True)
class Source:
    """One item to encode: a caption or a media file, with the signature that detects changes."""

    key: str
    signature: str
    value: Any  # the caption string, or the media file's Path
    where: str  # manifest line and id, for error messages
    view: int = 0  # an augmented image's view (see the module's docstring)


def caption_key(caption: str) -> str:
    """A caption's key in a text cache, and its signature: its content's digest."""
    return f"sha256:{hashlib.sha256(caption.encode()).hexdigest()[:16]}"


def view_key(record_id: str, view: int) -> str:
    """View 0 is the plain image, keyed as in a cache without augmentation."""
    return record_id if view == 0 else f"{record_id}@{view}"


def pick_view(draw: int, views: int) -> int:
    """The view a training draw reads. Derived from the draw, not `draw % views`: the draw also picks
    the caption as `draw % captions`, and with 2 captions and 4 views the view's parity would always
    follow the caption."""
    return view_seed(f"view:{draw}") % views


def signature_memo(folder: str | os.PathLike[str]) -> SignatureMemo:
    """The media signatures a cache folder's earlier builds and checks computed (see signatures.py)."""
    return SignatureMemo(Path(folder) / MEMO_NAME)


def sources(records: Sequence[Record], modality: str, memo: SignatureMemo | None = None,
            augment: ImageAugment | None = None) -> list[Source]:
    """Every item of `modality` in the records, in manifest order (each distinct caption once, where it
    first occurs; with `augment`, every image's view 0, then every training image's view 1, ...); `memo`
    spares hashing media files unchanged since it saw them."""
    if modality != "text":
        paths = [record.path(modality) for record in records]
        signatures = (memo or SignatureMemo(None)).signatures(paths)
        plain = [Source(record.id, signature, path, record.where())
                 for record, path, signature in zip(records, paths, signatures)]
        views = augment.views if augment is not None else 1
        trained = [item for record, item in zip(records, plain) if record.split == "train"]
        return plain + [
            Source(key, item.signature, AugmentedView(item.value, view_seed(key)), item.where, view)
            for view in range(1, views) for item in trained for key in [view_key(item.key, view)]
        ]
    items: dict[str, Source] = {}
    for record in records:
        for caption in record.captions():
            key = caption_key(caption)
            items.setdefault(key, Source(key, key, caption, record.where()))
    return list(items.values())


def signable(records: Sequence[Record], modality: str) -> list[Record]:
    """The records whose `modality` can be signed as a cache build signs it (a file that exists,
    captions all non-empty): a build skips the others, so no cache holds them."""
    usable = []
    for record in records:
        if modality not in record.fields:
            continue
        try:
            record.check((modality,))
        except BadRecordError:
            continue
        usable.append(record)
    return usable


def pad_features(rows: Sequence[Tensor]) -> dict[str, Tensor]:
    """Cached (length, dim) sequences -> {"features": (batch, max length, dim), "mask"}: what the model's
    `encode` returns for the same rows online."""
    lengths = torch.tensor([len(row) for row in rows])
    mask = torch.arange(int(lengths.max()))[None, :] < lengths[:, None]
    return {"features": pad_sequence(list(rows), batch_first=True), "mask": mask}


# --- building -----------------------------------------------------------------------------------------


def build_cache(
    root: str | os.PathLike[str],
    modality: str,
    records: Sequence[Record],
    encoder: FrozenEncoder,
    *,
    dtype: str = "float32",
    batch_size: int = 64,
    num_workers: int = 0,
    skip_bad_records: bool = False,
    device: torch.device | str = "cpu",
    overwrite: bool = False,
    items_per_shard: int = ITEMS_PER_SHARD,
    video_backend: str = "decord",
    max_image_pixels: int | None = DEFAULT_MAX_PIXELS,
    augment: ImageAugment | None = None,
    precision: str = FP32,
) -> Path:
    """Encode every item of `modality` once into `<root>/<modality>/`, or bring that cache up to date.

    A complete cache that serves these records is left as it is. Otherwise the shards whose items
    are all unchanged are kept and the others are encoded (an interrupted build's missing shards,
    shards holding changed or new items), which gives what a fresh build gives. A cache made
    differently (another encoder, preprocessing, dtype, precision, video backend or cache format) would
    lose every shard, so it raises StaleCacheError; with `overwrite` it is deleted and built anew.
    `precision` (32-true or bf16-mixed, resolved: see oneencoder.precision.resolve_precision) is what
    the encoder runs in, under autocast for bf16-mixed.
    Media are read the evaluation way (no random windows): one fixed encoding per item, or with
    `augment` (images only) `augment.views` of them (see the module's docstring).
    """
    if augment is not None and modality != "image":
        raise ValueError(f"augment applies to images, not to {modality!r}")
    folder = Path(root) / modality
    folder.mkdir(parents=True, exist_ok=True)
    precision = _precision_run(encoder, precision)
    with _build_lock(folder):
        memo = signature_memo(folder)
        items = sources(records, modality, memo, augment)
        memo.save()
        header = _header(modality, encoder, items, dtype, precision, items_per_shard, video_backend, augment)
        kept = _shards_to_keep(folder, header, encoder, items, augment, overwrite)
        if kept is None:
            return folder
        _remove_shards_except(folder, kept)
        atomic_write_text(folder / HEADER_NAME, json.dumps(header))
        chunks = [items[shard.start : shard.stop] for shard in _shard_ranges(header)]
        todo = [(index, chunk) for index, chunk in enumerate(chunks) if index not in kept]
        if kept:
            log.info("%s: keeping %d of %d shards, encoding %d", folder, len(kept), len(chunks), len(todo))
        reader = None if modality == "text" else build_reader(
            modality, encoder.preprocessor, video_backend, max_image_pixels
        )
        if augment is not None:
            reader = AugmentingReader(reader, augment)
        settings = _EncodeSettings(encoder, reader, DTYPES[dtype], precision, batch_size, num_workers, skip_bad_records,
                                   device)
        encoder.to(device)
        try:
            with tqdm(total=sum(len(c) for _, c in todo), desc=f"caching {modality}", unit="item") as progress:
                for index, chunk in todo:
                    _write_shard(_shard_path(folder, index), chunk, settings, progress)
        finally:
            encoder.unload()  # a stage trained from the cache never needs the weights again
    return folder


def _build_lock(folder: Path) -> contextlib.AbstractContextManager[None]:
    """One build of `folder` at a time, across processes and machines sharing the disk: a second
    build waits, then finds the cache complete."""

    def wait(holder: str) -> None:
        log.warning("%s: another build of this cache is running (pid %s); waiting for it to finish", folder, holder)

    return exclusive_lock(folder / LOCK_NAME, wait)


def _shards_to_keep(
    folder: Path, header: dict[str, Any], encoder: FrozenEncoder, items: list[Source], augment: ImageAugment | None,
    overwrite: bool,
) -> set[int] | None:
    """Indices of the existing shards that stay valid under `header`; None when the cache is
    complete and serves `items` as it is."""
    if not (folder / HEADER_NAME).is_file():
        return set()
    try:
        cache = FeatureCache(folder)
        cache.check_maker(encoder, header["dtype"], header["reader"].get("video_backend", "decord"), augment,
                          header["precision"])
    except StaleCacheError as error:
        if not overwrite:
            raise
        log.warning("overwriting %s: %s", folder, error)
        return set()
    try:
        cache.check_items(items)
    except StaleCacheError:  # incomplete, or items changed or added: keep what still holds
        return _unchanged_shards(cache.header, header) - set(cache.missing_shards)
    return None


def _unchanged_shards(old: dict[str, Any], new: dict[str, Any]) -> set[int]:
    """Shards whose items (keys, order and signatures) are the same under both headers."""
    if old["items_per_shard"] != new["items_per_shard"]:
        return set()
    before, after = list(old["sources"].items()), list(new["sources"].items())
    shards = zip(_shard_ranges(old), _shard_ranges(new))
    return {index for index, (was, now) in enumerate(shards)
            if before[was.start : was.stop] == after[now.start : now.stop]}


def _views(header: dict[str, Any]) -> int:
    """Views per training image: `augment.views` in an augmented image cache, else 1."""
    return header["reader"].get("augment", {}).get("views", 1)


def _view_sizes(items: Sequence[Source], views: int) -> list[int]:
    return [sum(item.view == view for item in items) for view in range(views)]


def _shard_ranges(header: dict[str, Any]) -> list[range]:
    """The item positions each shard holds: each view's items (one view after another) in shards of
    `items_per_shard` of their own, so that view 0's shards, and the batches encoding them, are a
    cache's without augmentation."""
    size, views = header["items_per_shard"], _views(header)
    # Caches from before "view_sizes" held every view of every image.
    sizes = header.get("view_sizes") or [len(header["sources"]) // views] * views
    starts = [sum(sizes[:view]) for view in range(views)]
    return [range(first + start, first + min(start + size, count))
            for first, count in zip(starts, sizes) for start in range(0, count, size)]


def _remove_shards_except(folder: Path, kept: set[int]) -> None:
    # Before the new header is written: a crash in between leaves the old header with shards
    # missing, which the next build treats the same way, never a stale shard under a new header.
    names = {_shard_path(folder, index).name for index in kept}
    for shard in folder.glob("shard-*.safetensors"):
        if shard.name not in names:
            shard.unlink()


def _reader_settings(modality: str, video_backend: str, augment: ImageAugment | None = None) -> dict[str, Any]:
    """The reading settings that change features without being the encoder's, as header.json holds
    them: the video decoder, the images' augmentation."""
    if modality == "video":
        return {"video_backend": video_backend}
    return _as_json({"augment": asdict(augment)}) if augment is not None else {}


def _as_json(value: Any) -> Any:
    """`value` as it reads back from header.json (tuples become lists), so the two compare equal."""
    return json.loads(json.dumps(value))


def _header(
    modality: str, encoder: FrozenEncoder, items: list[Source], dtype: str, precision: str, items_per_shard: int,
    video_backend: str, augment: ImageAugment | None,
) -> dict[str, Any]:
    if dtype not in DTYPES:
        raise ValueError(f"cache dtype must be one of {sorted(DTYPES)} (got {dtype!r})")
    if precision not in (FP32, BF16):
        raise ValueError(f"the cache's encoding precision must be {FP32!r} or {BF16!r} (got {precision!r})")
    return _as_json({
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "modality": modality,
        "encoder": {"fingerprint": encoder.fingerprint, **encoder.description},
        "reader": _reader_settings(modality, video_backend, augment),
        "dim": encoder.dim,
        "dtype": dtype,
        "precision": precision,
        "items_per_shard": items_per_shard,
        "view_sizes": _view_sizes(items, augment.views if augment is not None else 1),
        "sources": {item.key: item.signature for item in items},
    })


def _precision_run(encoder: FrozenEncoder, precision: str) -> str:
    """The precision `encoder` really runs in when asked for `precision`, as the header records it."""
    return precision if encoder.follows_autocast else FP32


def _shard_path(folder: Path, index: int) -> Path:
    return folder / f"shard-{index:05d}.safetensors"


class ReadingDataset(Dataset):
    """Decodes one value per index in a dataloader worker: (index, decoded, None), or (index, None,
    reason) for one that does not decode or that `problems` already marks bad (an empty caption, a
    file known to be missing). Captions (no `reader`) pass through as they are. Shared by the cache
    build and `oneencoder embed`, so both skip bad items the same way."""

    def __init__(self, values: Sequence[Any], reader: Reader | None,
                 problems: Sequence[str | None] | None = None) -> None:
        self.values = values
        self.reader = reader
        self.problems = problems or [None] * len(values)

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index: int) -> tuple[int, Any, str | None]:
        value, problem = self.values[index], self.problems[index]
        if problem is not None:
            return index, None, problem
        if self.reader is None:
            return index, value, None
        try:
            return index, self.reader(value, None), None
        except MediaError as error:
            return index, None, str(error)


class ReadingCollator:
    """ReadingDataset rows -> (indices kept, their preprocessed inputs or None, {index: reason} of the
    bad ones); preprocessing runs in the worker too."""

    def __init__(self, preprocessor: Any) -> None:
        self.preprocessor = preprocessor

    def __call__(self, rows: list[tuple[int, Any, str | None]]) -> tuple[list[int], dict[str, Tensor] | None, dict[int, str]]:
        kept = [(index, value) for index, value, _ in rows if value is not None]
        failed = {index: reason for index, value, reason in rows if value is None}
        inputs = self.preprocessor([value for _, value in kept]) if kept else None
        return [index for index, _ in kept], inputs, failed


@dataclass(frozen=True)
class _EncodeSettings:
    """How one build reads and encodes the items of every shard: `reader` None for captions, `dtype`
    the features' storage type, `precision` the encoder's (32-true or bf16-mixed), `device` its device."""

    encoder: FrozenEncoder
    reader: Reader | None
    dtype: torch.dtype
    precision: str
    batch_size: int
    num_workers: int
    skip_bad_records: bool
    device: torch.device | str


def _write_shard(path: Path, chunk: list[Source], settings: _EncodeSettings, progress: tqdm) -> None:
    # Batches never cross a shard boundary, so a resumed build encodes exactly the batches an
    # uninterrupted one would have, and the two caches are bit-identical.
    encoder, dtype = settings.encoder, settings.dtype
    loader = DataLoader(
        ReadingDataset([item.value for item in chunk], settings.reader), batch_size=settings.batch_size,
        num_workers=settings.num_workers, collate_fn=ReadingCollator(encoder.preprocessor),
    )
    keys: list[str] = []
    rows: list[Tensor] = []
    skipped: dict[str, str] = {}
    for indices, inputs, failed in loader:
        for index, reason in failed.items():
            if not settings.skip_bad_records:
                raise BadRecordError(
                    f"{chunk[index].where}: {reason}. Fix or remove the record, or set `skip_bad_records: true`"
                )
            log.warning("skipping %s: %s", chunk[index].where, reason)
            skipped[chunk[index].key] = reason
        if inputs is not None:
            with autocast(settings.precision, settings.device):
                output = encoder({name: tensor.to(settings.device) for name, tensor in inputs.items()})
            for row, index in enumerate(indices):
                keys.append(chunk[index].key)
                rows.append(output.features[row][output.mask[row]].to("cpu", dtype))
        progress.update(len(indices) + len(failed))
    features = torch.cat(rows) if rows else torch.empty(0, encoder.dim, dtype=dtype)
    lengths = torch.tensor([len(row) for row in rows], dtype=torch.int64)
    tensors = {"features": features.contiguous(), "lengths": lengths}
    metadata = {"keys": json.dumps(keys), "skipped": json.dumps(skipped)}
    atomic_write_with(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


# --- reading ------------------------------------------------------------------------------------------


class FeatureCache:
    """Read side of one modality's cache: key -> (length, dim) tensor, memory-mapped per process."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        path = self.folder / HEADER_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {self.folder} is not a feature cache (build one with `oneencoder cache`)")
        self.header = json.loads(path.read_text())
        oldest = FORMAT_VERSION if self.header.get("modality") == "text" else OLDEST_MEDIA_VERSION
        version = self.header.get("format_version")
        if self.header.get("format") != FORMAT or version not in range(oldest, FORMAT_VERSION + 1):
            readable = ", ".join(str(v) for v in range(oldest, FORMAT_VERSION + 1))
            raise StaleCacheError(
                f"{path} is not a feature cache this oneencoder reads (format {self.header.get('format')!r}"
                f" version {version}, expected {FORMAT!r} version {readable}: version 2 signs media by path and"
                " content, version 3 keys captions by their content). Rebuild it:"
                f" `oneencoder cache --overwrite --config <your stage config>`, or delete {self.folder}"
            )
        self.precision = self.header.get("precision", FP32)  # caches from before the setting were encoded in fp32
        self.num_shards = len(_shard_ranges(self.header))
        self.views = _views(self.header)
        augment = self.header["reader"].get("augment")  # as built, for readers of view 0 that take any views
        self.augment = None if augment is None else ImageAugment(
            **{name: tuple(value) if isinstance(value, list) else value for name, value in augment.items()}
        )
        self.missing_shards = [i for i in range(self.num_shards) if not _shard_path(self.folder, i).is_file()]
        self.index: dict[str, tuple[int, int, int]] = {}
        self.skipped: dict[str, str] = {}
        if not self.missing_shards:
            for shard in range(self.num_shards):
                self._index_shard(shard)
        self._handles: dict[int, Any] = {}

    def _index_shard(self, shard: int) -> None:
        path = _shard_path(self.folder, shard)
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata()
                lengths = handle.get_tensor("lengths").tolist()
                rows = handle.get_slice("features").get_shape()[0]
            keys, skipped = json.loads(metadata["keys"]), json.loads(metadata["skipped"])
        except (SafetensorError, OSError, KeyError, TypeError, ValueError) as error:
            raise _corrupt(path, f"{type(error).__name__}: {error}") from None
        if len(keys) != len(lengths) or sum(lengths) != rows:
            raise _corrupt(path, f"{len(keys)} keys, {len(lengths)} lengths summing to {sum(lengths)}, {rows} feature rows")
        offset = 0
        for key, length in zip(keys, lengths):
            self.index[key] = (shard, offset, length)
            offset += length
        self.skipped.update(skipped)

    def check(self, encoder: FrozenEncoder, items: Sequence[Source], dtype: str = "float32",
              video_backend: str = "decord", augment: ImageAugment | None = None, precision: str = FP32) -> None:
        """Refuse (StaleCacheError) unless this cache holds every item, made by this encoder in this
        precision and these reading settings from these very files, complete."""
        self.check_maker(encoder, dtype, video_backend, augment, precision)
        self.check_items(items)

    def check_maker(self, encoder: FrozenEncoder, dtype: str, video_backend: str,
                    augment: ImageAugment | None = None, precision: str = FP32) -> None:
        """Refuse a cache made by another encoder, preprocessing, dtype, encoding precision, video
        backend or image augmentation: none of its shards can serve this config."""
        replace = (
            " Replace it with `oneencoder cache --overwrite --config <your stage config>` (deletes its"
            f" shards and encodes every item again), or delete {self.folder}, or point `feature_cache`"
            " to another folder."
        )
        cached = self.header["encoder"]
        if cached["fingerprint"] != encoder.fingerprint:
            differs = _differences(cached, _as_json(encoder.description))
            raise StaleCacheError(
                f"{self.folder} was built by another encoder or preprocessing ({cached['fingerprint']}, now"
                f" {encoder.fingerprint}); what differs: {', '.join(differs) or 'the encoder class'}", f".{replace}"
            )
        reader = _reader_settings(self.header["modality"], video_backend, augment)
        if self.header["reader"] != reader:
            differs = ", ".join(_differences(self.header["reader"], reader))
            raise StaleCacheError(
                f"{self.folder} was decoded with {self.header['reader']}, the config asks for {reader}; what"
                f" differs: {differs}", f".{replace}"
            )
        if dtype != self.header["dtype"]:
            raise StaleCacheError(f"{self.folder} stores {self.header['dtype']} features, the config asks for {dtype}",
                                  f".{replace}")
        precision = _precision_run(encoder, precision)
        if precision != self.precision:
            raise StaleCacheError(
                f"{self.folder} was encoded in {self.precision}, the config asks for {precision}",
                " (`cache_precision`; `auto` picks bf16-mixed only where this machine runs bf16 fast). Set"
                f" `cache_precision: {self.precision}` to use it as it is.{replace}"
            )

    def check_encoder(self, encoder: FrozenEncoder, video_backend: str, precision: str | None = None) -> None:
        """check_maker for reading the plain items back (an image's view 0) whatever the storage dtype
        and augmented views: refuse a cache that another encoder, preprocessing or video decoder made,
        or, given `precision`, that the encoder made in another precision."""
        self.check_maker(encoder, self.header["dtype"], video_backend, self.augment, precision or self.precision)

    def served(self, items: Sequence[Source]) -> set[str]:
        """The keys of `items` this cache holds as they are now (the same file content or caption,
        decoded when it was built); none while shards are missing."""
        if self.missing_shards:
            return set()
        held = self.header["sources"]
        return {item.key for item in items if held.get(item.key) == item.signature and item.key in self}

    def check_items(self, items: Sequence[Source]) -> None:
        """Refuse a cache that lacks some of `items`, holds them from files that changed since, or
        is unfinished. Building again encodes only the shards concerned."""
        update = f" Update it with {CACHE_COMMAND}: it encodes again only the shards holding those items."
        signatures = self.header["sources"]
        absent = [item for item in items if item.key not in signatures]
        changed = [item for item in items if item.key in signatures and signatures[item.key] != item.signature]
        if absent:
            raise StaleCacheError(
                f"{self.folder} has no features for {len(absent)} of {len(items)} items (e.g. {_examples(absent)});"
                f" the manifest gained records, or captions changed, since the cache was built.{update}"
            )
        if changed:
            raise StaleCacheError(
                f"{self.folder}: {len(changed)} sources changed since the cache was built (file content or"
                f" path), e.g. {_examples(changed)}.{update}"
            )
        if self.missing_shards:
            raise StaleCacheError(
                f"incomplete cache {self.folder}: {len(self.missing_shards)} of {self.num_shards} shards missing"
                f" (an interrupted build). Finish it with {CACHE_COMMAND}; finished shards are kept."
            )

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def __getitem__(self, key: str) -> Tensor:
        shard, offset, length = self.index[key]
        if shard not in self._handles:
            handle = safe_open(str(_shard_path(self.folder, shard)), framework="pt")
            self._handles[shard] = (handle, handle.get_slice("features"))
        return self._handles[shard][1][offset : offset + length]

    def __getstate__(self) -> dict[str, Any]:
        # Open memory maps do not cross process boundaries; each worker opens its own.
        return {**self.__dict__, "_handles": {}}


@dataclass
class ServedFeatures:
    """One modality's plain items (an image's view 0, each caption), each read from the cache that
    holds it as it is now: several stages' caches of a modality together, each holding its own records'
    items (an evaluation's captions come from every stage that paired text with something)."""

    owners: dict[str, FeatureCache]

    def __getitem__(self, key: str) -> Tensor:
        return self.owners[key][key]


def _examples(items: Sequence[Source]) -> str:
    """A few items as an error names them: a media file's path, a caption's manifest line and record."""
    return ", ".join(str(item.value) if isinstance(item.value, Path) else item.where for item in items[:3])


def _corrupt(path: Path, found: str) -> CorruptCacheError:
    return CorruptCacheError(
        f"{path} is not a readable feature-cache shard ({found}): it was truncated or damaged after it"
        f" was written. Delete it and run {CACHE_COMMAND}: the build resumes and encodes only that shard."
    )


def _differences(cached: dict[str, Any], current: dict[str, Any], prefix: str = "", depth: int = 3) -> list[str]:
    """Dotted names of the settings that differ, a few levels deep (not every vocabulary entry)."""
    names = []
    for key in sorted(set(cached) | set(current)):
        a, b = cached.get(key), current.get(key)
        if key == "fingerprint" or a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict) and depth > 1:
            names += _differences(a, b, f"{prefix}{key}.", depth - 1)
        else:
            names.append(f"{prefix}{key}")
    return names[:8]
