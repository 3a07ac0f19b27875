"""Paired records (image-text, audio-text, ...) from a manifest, as batches of encoder inputs."""

from __future__ import annotations

import logging
import math
import random
from typing import Any, Callable, Mapping, Sequence

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from oneencoder.encoders import FrozenEncoder
from oneencoder.readers import (
    DEFAULT_MAX_PIXELS,
    READABLE,
    MediaError,
    Reader,
    build_reader,
    check_video_backend,
)

from .feature_cache import FeatureCache, build_cache, pad_features, signature_memo, sources, text_key
from .manifest import BadRecordError, Record, read_manifests
from .sampling import EpochSampler, loader_generator

log = logging.getLogger(__name__)

Preprocess = Callable[[Sequence[Any]], dict[str, Tensor]]
SKIP_HINT = "Fix or remove the record, or set `skip_bad_records: true` to skip such records."


class PairDataset(Dataset):
    """Item = {"index": record index, modality: [rows]}; None for a skipped bad record.

    The key decides the mode. A record index is evaluation: all the record's captions, media read the
    fixed way. `(index, draw)` is training (EpochSampler's keys): `draw` picks the one caption and
    seeds the readers' random windows, so the sampler alone decides an epoch, whichever worker reads
    which item. A row is raw (caption, image, ...), read by `readers`, or, for a modality in
    `caches`, its cached token features.
    """

    def __init__(
        self,
        records: list[Record],
        modalities: tuple[str, ...],
        skip_bad_records: bool,
        caches: Mapping[str, FeatureCache] | None = None,
        readers: Mapping[str, Reader] | None = None,
    ) -> None:
        self.records = records
        self.modalities = modalities
        self.skip_bad_records = skip_bad_records
        self.caches = caches or {}
        self.readers = readers or {}

    def __len__(self) -> int:
        return len(self.records)

    def _captions(self, record: Record, draw: int | None) -> list[Any]:
        captions = record.captions()
        indices: Sequence[int] = range(len(captions)) if draw is None else [draw % len(captions)]
        if "text" in self.caches:
            return [self.caches["text"][text_key(record.id, i)] for i in indices]
        return [captions[i] for i in indices]

    def _media(self, record: Record, modality: str, rng: random.Random | None) -> Any:
        cache = self.caches.get(modality)
        if cache is None:
            return self.readers[modality](record.path(modality), rng)
        return cache[record.id]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any] | None:
        index, draw = key if isinstance(key, tuple) else (key, None)
        rng = None if draw is None else random.Random(draw)
        record = self.records[index]
        item: dict[str, Any] = {"index": index}
        for modality in self.modalities:
            if modality == "text":
                item["text"] = self._captions(record, draw)
                continue
            try:
                item[modality] = [self._media(record, modality, rng)]
            except MediaError as error:
                if self.skip_bad_records:
                    log.warning("skipping %s: %s", record.where(), error)
                    return None
                raise BadRecordError(f"{record.where()}: {error}. {SKIP_HINT}") from None
        return item


class PairCollator:
    """Items -> {"inputs": {modality: encoder inputs}, "owners": {modality: (rows, 2)}, "size",
    "num_skipped"}.

    Rows [0, size) of every modality are the records' pairs, in order; rows after that (extra
    captions in evaluation) follow. `owners` gives each row's (record index, row within record).
    """

    def __init__(self, preprocessors: Mapping[str, Preprocess], modalities: tuple[str, ...]) -> None:
        self.preprocessors = preprocessors
        self.modalities = modalities

    def __call__(self, items: list[dict[str, Any] | None]) -> dict[str, Any]:
        kept = [item for item in items if item is not None]
        batch: dict[str, Any] = {"inputs": {}, "owners": {}, "size": len(kept), "num_skipped": len(items) - len(kept)}
        if not kept:
            return batch
        for modality in self.modalities:
            rows = [item[modality][0] for item in kept]
            owners = [(item["index"], 0) for item in kept]
            for item in kept:
                for position, row in enumerate(item[modality][1:], start=1):
                    rows.append(row)
                    owners.append((item["index"], position))
            batch["inputs"][modality] = self.preprocessors[modality](rows)
            batch["owners"][modality] = torch.tensor(owners, dtype=torch.long)
        return batch


class ManifestDataModule(LightningDataModule):
    """Pairs of two modalities from a JSON Lines manifest (or several, read as one), split by their
    `split` field.

    Bad records (a missing file, an empty caption) raise BadRecordError naming the manifest line and
    the file; with `skip_bad_records` they are skipped, counted and logged instead. Files that exist
    but do not decode are found while reading: skipped ones are counted in each batch's `num_skipped`.
    `encoders` comes from the model (the CLI links it): {modality: FrozenEncoder}.

    Media are read to suit each encoder's preprocessor: sounds resampled to its rate, mono, at most
    its `max_seconds`; videos as its `num_frames` frames, decoded with `video_backend` ("decord", or
    "pyav" where decord has no wheel). Training reads a random window of each sound and video when
    the sampler passes `(index, draw)` keys (see PairDataset), evaluation a fixed one. Images of more
    than `max_image_pixels` pixels (None: no limit) are bad records. `contained_paths` refuses
    manifests whose media paths lead outside their folder (for manifests that are not trusted).

    With `feature_cache` (a folder), batches carry the encoders' token features read from that cache
    instead of raw inputs, and the encoders' weights are never loaded. The cache is built on first use
    (in `prepare_data`, by one process per node) and refused when it no longer matches the encoders or
    the files; `cache_dtype: float16` halves its size. It holds one encoding per item, read the
    evaluation way (the first `max_seconds`, frames spread over the whole video), so training from
    it sees no random windows.
    """

    def __init__(
        self,
        manifest: str | list[str],
        modalities: tuple[str, str] = ("image", "text"),
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        skip_bad_records: bool = False,
        feature_cache: str | None = None,
        cache_dtype: str = "float32",
        encoders: Mapping[str, FrozenEncoder] | None = None,
        video_backend: str = "decord",
        max_image_pixels: int | None = DEFAULT_MAX_PIXELS,
        contained_paths: bool = False,
    ) -> None:
        super().__init__()
        unknown = [m for m in modalities if m != "text" and m not in READABLE]
        if unknown:
            raise ValueError(f"no reader for modalities {unknown}; readable: {['text', *READABLE]}")
        if "video" in modalities:
            check_video_backend(video_backend)
        self.manifest = manifest
        self.modalities = tuple(modalities)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.skip_bad_records = skip_bad_records
        self.feature_cache = feature_cache
        self.cache_dtype = cache_dtype
        self.encoders = encoders
        self.video_backend = video_backend
        self.max_image_pixels = max_image_pixels
        self.contained_paths = contained_paths
        self.splits: dict[str, list[Record]] = {}
        self.caches: dict[str, FeatureCache] = {}
        self.num_skipped_at_setup = 0

    def _encoders(self) -> Mapping[str, FrozenEncoder]:
        if self.encoders is None:
            raise RuntimeError("ManifestDataModule needs `encoders` (the model's) before it can load or cache batches")
        missing = [m for m in self.modalities if m not in self.encoders]
        if missing:
            raise ValueError(f"no encoder for {missing}; the model has {sorted(self.encoders)}")
        return self.encoders

    def prepare_data(self) -> None:
        if self.feature_cache is not None:
            device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
            self.build_feature_cache(device)

    def build_feature_cache(self, device: torch.device | str = "cpu", overwrite: bool = False) -> None:
        """Encode every usable record of every split once into `feature_cache` (resumes; see feature_cache)."""
        if self.feature_cache is None:
            raise ValueError(
                "no feature cache folder: set `data.init_args.feature_cache` in the config or pass"
                " --data.init_args.feature_cache=DIR"
            )
        records, _ = self._usable_records()
        for modality in self.modalities:
            build_cache(
                self.feature_cache, modality, records, self._encoders()[modality], dtype=self.cache_dtype,
                batch_size=self.eval_batch_size, num_workers=self.num_workers,
                skip_bad_records=self.skip_bad_records, device=device, overwrite=overwrite,
                video_backend=self.video_backend, max_image_pixels=self.max_image_pixels,
            )

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        usable, skipped = self._usable_records()
        if self.feature_cache is not None:
            self.caches = self._checked_caches(usable)
            # Records the cache build could not decode never reach the dataset: dropped here once,
            # not met and skipped again in every epoch.
            decodable = [r for r in usable if not any(r.id in cache.skipped for cache in self.caches.values())]
            if len(decodable) < len(usable):
                log.warning("%s: dropping %d records the feature cache could not decode", self.feature_cache,
                            len(usable) - len(decodable))
            skipped += len(usable) - len(decodable)
            usable = decodable
        self.splits = {split: [r for r in usable if r.split == split] for split in ("train", "val", "test")}
        log.info(
            "%s: %d usable records with %s, %d skipped as bad; train %d, val %d, test %d",
            self.manifest, len(usable), "+".join(self.modalities), skipped,
            *(len(self.splits[s]) for s in ("train", "val", "test")),
        )
        self.num_skipped_at_setup = skipped

    def _checked_caches(self, records: list[Record]) -> dict[str, FeatureCache]:
        """Each modality's cache, refused (StaleCacheError) unless it serves these records as they are now."""
        caches = {}
        for modality in self.modalities:
            cache = FeatureCache(f"{self.feature_cache}/{modality}")
            items = sources(records, modality, signature_memo(cache.folder))
            cache.check(self._encoders()[modality], items, self.cache_dtype, self.video_backend)
            caches[modality] = cache
        return caches

    def _usable_records(self) -> tuple[list[Record], int]:
        """The manifest's records that have every modality and pass the cheap checks, and how many did not."""
        records = read_manifests(self.manifest, self.contained_paths)
        paired = [r for r in records if all(m in r.fields for m in self.modalities)]
        skipped = 0
        usable = []
        for record in paired:
            try:
                record.check(self.modalities)
            except BadRecordError as error:
                if not self.skip_bad_records:
                    raise BadRecordError(f"{error}. {SKIP_HINT}") from None
                log.warning("skipping %s", error)
                skipped += 1
                continue
            usable.append(record)
        return usable, skipped

    def _loader(self, split: str, train: bool) -> DataLoader:
        if self.caches:
            preprocessors: Mapping[str, Preprocess] = {m: pad_features for m in self.modalities}
            readers: dict[str, Reader] = {}
        else:
            encoders = self._encoders()
            preprocessors = {m: encoder.preprocessor for m, encoder in encoders.items()}
            readers = {
                m: build_reader(m, encoders[m].preprocessor, self.video_backend, self.max_image_pixels)
                for m in self.modalities
                if m != "text"
            }
        records = self.splits[split]
        if not records:
            raise ValueError(f"{self.manifest} has no {split!r} records with {' and '.join(self.modalities)}")
        dataset = PairDataset(records, self.modalities, self.skip_bad_records, caches=self.caches, readers=readers)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=EpochSampler(len(records), self._epoch) if train else None,
            drop_last=train and self._records_per_process(len(records)) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=PairCollator(preprocessors, self.modalities),
            generator=loader_generator(),
        )

    def _records_per_process(self, count: int) -> int:
        """How many of `count` records each process reads: under DDP Lightning shards the sampler to
        ceil(count / world size) per process, so dropping a last partial batch is decided on that share
        (on the whole split, a small one would leave every process with no batch at all)."""
        world_size = self.trainer.world_size if self.trainer is not None else 1
        return math.ceil(count / world_size)

    def _epoch(self) -> int:
        # Epochs processed so far, which is what Lightning gives samplers' set_epoch: a run resumed
        # from an end-of-epoch checkpoint has already advanced it, while `current_epoch` lags there.
        return self.trainer.fit_loop.epoch_progress.current.processed if self.trainer is not None else 0

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
