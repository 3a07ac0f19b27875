"""Paired records as a Dataset and the collator that makes them batches of encoder inputs; free of
Lightning, so that `oneencoder evaluate` embeds with them without importing it."""

from __future__ import annotations

import logging
import random
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from oneencoder.readers import MediaError, Reader

from .feature_cache import FeatureCache, ServedFeatures, caption_key, pick_view, view_key
from .manifest import BadRecordError, Record

log = logging.getLogger(__name__)

Preprocess = Callable[[Sequence[Any]], dict[str, Tensor]]
SKIP_HINT = "Fix or remove the record, or set `skip_bad_records: true` to skip such records."


class PairDataset(Dataset):
    """Item = {"index": record index, modality: [rows]}; None for a skipped bad record.

    The key decides the mode. A record index is evaluation: all the record's captions, media read the
    fixed way. `(index, draw)` is training (EpochSampler's keys): `draw` picks the one caption and
    seeds the readers' random windows, so the sampler alone decides an epoch, whichever worker reads
    which item. A row is raw (caption, image, ...), read by `readers`, or, for a modality in
    `caches`, its cached token features: in training, of the view the draw picks from a cache of
    several views per image (see feature_cache.pick_view), else of view 0, the plain image (all that
    ServedFeatures, an evaluation's, holds).
    """

    def __init__(
        self,
        records: list[Record],
        modalities: tuple[str, ...],
        skip_bad_records: bool,
        caches: Mapping[str, FeatureCache | ServedFeatures] | None = None,
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
            return [self.caches["text"][caption_key(captions[i])] for i in indices]
        return [captions[i] for i in indices]

    def _media(self, record: Record, modality: str, draw: int | None, rng: random.Random | None) -> Any:
        cache = self.caches.get(modality)
        if cache is None:
            return self.readers[modality](record.path(modality), rng)
        return cache[view_key(record.id, 0 if draw is None else pick_view(draw, cache.views))]

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
                item[modality] = [self._media(record, modality, draw, rng)]
            except MediaError as error:
                if self.skip_bad_records:
                    log.warning("skipping %s: %s", record.where(), error)
                    return None
                raise BadRecordError(f"{record.where()}: {error}. {SKIP_HINT}") from None
        return item


class PairCollator:
    """Items -> {"inputs": {modality: encoder inputs}, "owners": {modality: (rows, 2)}, "size",
    "num_skipped", "modalities"}.

    Rows [0, size) of every modality are the records' pairs, in order; rows after that (extra
    captions in evaluation) follow. `owners` gives each row's (record index, row within record).
    `modalities` names the pair, even in an empty batch: a stage fed by several sources (see
    BalancedDataModule) learns from it which pair a batch holds.
    """

    def __init__(self, preprocessors: Mapping[str, Preprocess], modalities: tuple[str, ...]) -> None:
        self.preprocessors = preprocessors
        self.modalities = modalities

    def __call__(self, items: list[dict[str, Any] | None]) -> dict[str, Any]:
        kept = [item for item in items if item is not None]
        batch: dict[str, Any] = {"inputs": {}, "owners": {}, "size": len(kept), "num_skipped": len(items) - len(kept),
                                 "modalities": self.modalities}
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
