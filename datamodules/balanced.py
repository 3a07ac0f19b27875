"""OneLLM's balanced sampling over several sources, each a manifest and the pair of modalities it
trains (image-text, audio-text, ...): one source per batch, the sources taking turns, an epoch as long
as the smallest source allows, and a per-source repeat factor that raises a small source's share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from oneencoder.encoders import FrozenEncoder
from oneencoder.precision import FP32, EncodingPrecision
from oneencoder.readers import DEFAULT_MAX_PIXELS

from .augment import ImageAugment
from .pairs import ManifestDataModule, fit_epoch
from .pairs_dataset import PairCollator, PairDataset
from .sampling import BalancedBatchSampler, SourceBatch, loader_generator


@dataclass(frozen=True)
class Source:
    """A manifest (or several, read as one), the pair of modalities its batches hold, its feature
    cache folder (see ManifestDataModule; one folder per source, since its text cache holds that
    source's records), and how many times per epoch its records are drawn (0.5: half of them, 2: each
    twice)."""

    manifest: str | list[str]
    modalities: tuple[str, str]
    feature_cache: str | None = None
    repeat: float = 1.0
    augment: ImageAugment | None = None  # an image source's augmented views (see ManifestDataModule)

    def __post_init__(self) -> None:
        if len(self.modalities) != 2:
            raise ValueError(f"source {self.manifest}: `modalities` must be a pair, got {list(self.modalities)}")
        if not self.repeat > 0:
            raise ValueError(f"source {self.manifest}: `repeat` must be > 0, got {self.repeat}")


class SourceBatches(Dataset):
    """SourceBatch -> that source's batch, its items fetched and collated by the source's own dataset
    and collator: with BalancedBatchSampler's descriptors, each loader worker builds whole batches."""

    def __init__(self, datasets: Sequence[PairDataset], collators: Sequence[PairCollator]) -> None:
        self.datasets = list(datasets)
        self.collators = list(collators)

    def __getitem__(self, key: SourceBatch) -> dict[str, Any]:
        source, keys = key
        return self.collators[source]([self.datasets[source][k] for k in keys])


def _as_is(batch: dict[str, Any]) -> dict[str, Any]:
    """The loader's collate_fn: SourceBatches' items are batches already."""
    return batch


class BalancedDataModule(LightningDataModule):
    """Batches from several sources (see Source) in OneLLM's balanced order (see BalancedBatchSampler):
    each training batch holds one source, the sources take turns, and under DDP every process takes
    the same source at the same step. Evaluation gives one loader per source, in the sources' order,
    so Lightning's `dataloader_idx` is the source index; every batch names its pair in `modalities`.

    Each source is read by its own ManifestDataModule (same checks, bad-record handling and feature
    caches); the other settings are shared by all sources and mean what they mean there.
    """

    def __init__(
        self,
        sources: list[Source],
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        skip_bad_records: bool = False,
        cache_dtype: str = "float32",
        cache_precision: EncodingPrecision = FP32,
        encoders: Mapping[str, FrozenEncoder] | None = None,
        video_backend: str = "decord",
        max_image_pixels: int | None = DEFAULT_MAX_PIXELS,
        contained_paths: bool = False,
    ) -> None:
        super().__init__()
        if not sources:
            raise ValueError("BalancedDataModule needs at least one source: set `data.init_args.sources` to a list"
                             " of {manifest, modalities}")
        _check_distinct_caches(sources)
        self.sources = list(sources)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.source_modules = [
            ManifestDataModule(
                source.manifest, source.modalities, batch_size=batch_size, eval_batch_size=eval_batch_size,
                num_workers=num_workers, skip_bad_records=skip_bad_records, feature_cache=source.feature_cache,
                cache_dtype=cache_dtype, cache_precision=cache_precision, encoders=encoders, video_backend=video_backend,
                max_image_pixels=max_image_pixels, contained_paths=contained_paths, augment=source.augment,
            )
            for source in self.sources
        ]

    @property
    def encoders(self) -> Mapping[str, FrozenEncoder] | None:
        return self.source_modules[0].encoders

    @encoders.setter
    def encoders(self, encoders: Mapping[str, FrozenEncoder] | None) -> None:
        for module in self.source_modules:
            module.encoders = encoders

    @property
    def modalities(self) -> tuple[str, ...]:
        """Every source's modalities, each once, in the sources' order."""
        return tuple(dict.fromkeys(m for source in self.sources for m in source.modalities))

    def prepare_data(self) -> None:
        for module in self.source_modules:
            module.trainer = self.trainer  # its device builds the caches
            module.prepare_data()

    def build_feature_cache(self, device: torch.device | str = "cpu", overwrite: bool = False) -> None:
        """Build every source's feature cache (see ManifestDataModule.build_feature_cache)."""
        if all(source.feature_cache is None for source in self.sources):
            raise ValueError("no source has a feature cache folder: set `feature_cache` in the sources of"
                             " `data.init_args.sources`")
        for module in self.source_modules:
            if module.feature_cache is not None:
                module.build_feature_cache(device, overwrite=overwrite)

    def setup(self, stage: str | None = None) -> None:
        for module in self.source_modules:
            module.setup(stage)

    def train_dataloader(self) -> DataLoader:
        parts = [module.pair_batches("train") for module in self.source_modules]
        sampler = BalancedBatchSampler(
            [len(dataset) for dataset, _ in parts], [source.repeat for source in self.sources], self.batch_size,
            self._epoch,
        )
        return DataLoader(
            SourceBatches(*zip(*parts)),
            batch_size=None,
            sampler=sampler,
            collate_fn=_as_is,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=loader_generator(),
        )

    def _epoch(self) -> int:
        return fit_epoch(self.trainer)

    def val_dataloader(self) -> list[DataLoader]:
        return [module.val_dataloader() for module in self.source_modules]

    def test_dataloader(self) -> list[DataLoader]:
        return [module.test_dataloader() for module in self.source_modules]


def _check_distinct_caches(sources: Sequence[Source]) -> None:
    """Two sources may not share a feature cache folder: each folder's text cache serves one record set."""
    seen: dict[str, int] = {}
    for index, source in enumerate(sources):
        if source.feature_cache is None:
            continue
        if source.feature_cache in seen:
            raise ValueError(
                f"sources {seen[source.feature_cache]} and {index} share the feature cache {source.feature_cache};"
                " give each source its own folder"
            )
        seen[source.feature_cache] = index
