"""Paired records (image-text, audio-text, ...) from a manifest, as batches of encoder inputs."""

from __future__ import annotations

import logging
import math
from typing import Mapping

import torch
from lightning.pytorch import LightningDataModule, Trainer
from torch.utils.data import DataLoader

from oneencoder.encoders import FrozenEncoder
from oneencoder.precision import FP32, EncodingPrecision, resolve_precision
from oneencoder.readers import DEFAULT_MAX_PIXELS, READABLE, Reader, build_reader, check_video_backend

from .augment import ImageAugment
from .feature_cache import FeatureCache, build_cache, pad_features, signature_memo, sources
from .manifest import BadRecordError, Record, read_manifests
from .pairs_dataset import SKIP_HINT, PairCollator, PairDataset, Preprocess
from .sampling import EpochSampler, loader_generator

log = logging.getLogger(__name__)


def fit_epoch(trainer: Trainer | None) -> int:
    """The epoch a training sampler orders by: epochs processed so far, which is what Lightning gives
    samplers' `set_epoch` (a run resumed from an end-of-epoch checkpoint has already advanced it, while
    `current_epoch` lags there); 0 outside a trainer."""
    return trainer.fit_loop.epoch_progress.current.processed if trainer is not None else 0


class ManifestDataModule(LightningDataModule):
    """Records with every one of `modalities` (a pair for the contrastive stages; audio, video and
    text together for the codebook stage) from a JSON Lines manifest (or several, read as one), split
    by their `split` field.

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

    With `feature_cache` (a folder holding one `<modality>/` cache per modality, or a mapping from each
    modality to such a folder, so that a stage reads another stage's cache of the same records: the
    codebook demo reads the align-video stage's video features), batches carry the encoders' token
    features read from that cache instead of raw inputs, and the encoders' weights are never loaded.
    The cache is built on first use (in `prepare_data`, by one process per node) and refused when it
    no longer matches the encoders or the files; `cache_dtype: float16` halves its size, and
    `cache_precision: auto` encodes in bf16 where the machine runs bf16 fast (the cache records it and
    is refused under another precision). It holds one encoding per item, read the evaluation way (the
    first `max_seconds`, frames spread over the whole video), so training from it sees no random windows. With `augment` (e.g. `augment: {views: 4}`; see augment.ImageAugment),
    the image cache holds `views` views per image, view 0 the plain image: training reads the view
    each item's draw picks, evaluation view 0. Augmentation lives only in the cache (fixed views,
    encoded once), so `augment` without `feature_cache` is refused rather than silently ignored.
    """

    def __init__(
        self,
        manifest: str | list[str],
        modalities: tuple[str, ...] = ("image", "text"),
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        skip_bad_records: bool = False,
        feature_cache: str | dict[str, str] | None = None,
        cache_dtype: str = "float32",
        cache_precision: EncodingPrecision = FP32,
        encoders: Mapping[str, FrozenEncoder] | None = None,
        video_backend: str = "decord",
        max_image_pixels: int | None = DEFAULT_MAX_PIXELS,
        contained_paths: bool = False,
        augment: ImageAugment | None = None,
    ) -> None:
        super().__init__()
        if augment is not None and (feature_cache is None or "image" not in modalities):
            raise ValueError(
                "`augment` makes augmented views of images in the feature cache: it needs `feature_cache` and"
                f" the image modality (modalities {list(modalities)}, feature_cache {feature_cache!r})"
            )
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
        self.cache_precision = cache_precision
        self.encoders = encoders
        self.video_backend = video_backend
        self.max_image_pixels = max_image_pixels
        self.contained_paths = contained_paths
        self.augment = augment
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

    def cache_root(self, modality: str) -> str:
        """The folder holding `modality`'s feature cache (under `<folder>/<modality>`)."""
        if not isinstance(self.feature_cache, dict):
            return str(self.feature_cache)
        if modality not in self.feature_cache:
            raise ValueError(f"feature_cache names folders for {sorted(self.feature_cache)} but not for {modality!r};"
                             " give every modality of the data module a folder, or one folder for all")
        return self.feature_cache[modality]

    def prepare_data(self) -> None:
        if self.feature_cache is not None:
            self.build_feature_cache(self._device())

    def build_feature_cache(self, device: torch.device | str = "cpu", overwrite: bool = False) -> None:
        """Encode every usable record of every split once into `feature_cache` (resumes; see feature_cache)."""
        if self.feature_cache is None:
            raise ValueError(
                "no feature cache folder: set `data.init_args.feature_cache` in the config or pass"
                " --data.init_args.feature_cache=DIR"
            )
        records, _ = self._usable_records()
        precision = resolve_precision(self.cache_precision, device)
        for modality in self.modalities:
            build_cache(
                self.cache_root(modality), modality, records, self._encoders()[modality], dtype=self.cache_dtype,
                batch_size=self.eval_batch_size, num_workers=self.num_workers,
                skip_bad_records=self.skip_bad_records, device=device, overwrite=overwrite,
                video_backend=self.video_backend, max_image_pixels=self.max_image_pixels,
                augment=self._augment(modality), precision=precision,
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
        precision = resolve_precision(self.cache_precision, self._device())
        for modality in self.modalities:
            cache = FeatureCache(f"{self.cache_root(modality)}/{modality}")
            augment = self._augment(modality)
            items = sources(records, modality, signature_memo(cache.folder), augment)
            cache.check(self._encoders()[modality], items, self.cache_dtype, self.video_backend, augment, precision)
            caches[modality] = cache
        return caches

    def _device(self) -> torch.device:
        """Where the trainer runs (the frozen encoders encode there), else the CPU."""
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def _augment(self, modality: str) -> ImageAugment | None:
        return self.augment if modality == "image" else None

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

    def pair_batches(self, split: str) -> tuple[PairDataset, PairCollator]:
        """A split's dataset and the collator that makes its items batches (BalancedDataModule batches
        several modules' datasets with their own collators)."""
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
        return dataset, PairCollator(preprocessors, self.modalities)

    def _loader(self, split: str, train: bool) -> DataLoader:
        dataset, collator = self.pair_batches(split)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=EpochSampler(len(dataset), self._epoch) if train else None,
            drop_last=train and self._records_per_process(len(dataset)) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collator,
            generator=loader_generator(),
        )

    def _records_per_process(self, count: int) -> int:
        """How many of `count` records each process reads: under DDP Lightning shards the sampler to
        ceil(count / world size) per process, so dropping a last partial batch is decided on that share
        (on the whole split, a small one would leave every process with no batch at all)."""
        world_size = self.trainer.world_size if self.trainer is not None else 1
        return math.ceil(count / world_size)

    def _epoch(self) -> int:
        return fit_epoch(self.trainer)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
