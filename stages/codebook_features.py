"""A codebook model's codes for every record of a manifest, split by split and modality: what the
cross-modal generalization evaluation trains and tests its classifiers on. Features come from the
data module (and its feature cache, when given), exactly as the stage read them."""

from __future__ import annotations

import os
from typing import Sequence

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from datamodules import ManifestDataModule
from oneencoder.codebook_model import CodebookModel

from .generalize import Features, SplitFeatures

SPLITS = ("train", "val", "test")


def extract_features(
    folder: str | os.PathLike[str] | CodebookModel,
    manifest: str | list[str],
    feature_cache: str | dict[str, str] | None = None,
    modalities: Sequence[str] = ("audio", "video"),
    toc: bool = True,
    cache_dtype: str = "float32",
    cache_precision: str = "32-true",
    batch_size: int = 128,
    num_workers: int = 0,
) -> Features:
    """{modality: {split: SplitFeatures}}: per modality, the records of `manifest` (one file or
    several read as one) that have it, with their `label` (text: each record's first caption). The
    modalities may come from different records (UCF-101's videos, VGGSound's sounds). `toc` False
    ignores the folder's TOC choice (all codebook dimensions)."""
    model = folder if isinstance(folder, CodebookModel) else CodebookModel.from_pretrained(folder)
    chosen = model.config.toc
    if not toc:
        model.config.toc = None
    model.eval()
    try:
        return {m: _modality_features(model, m, manifest, feature_cache, cache_dtype, cache_precision, batch_size,
                                      num_workers)
                for m in modalities}
    finally:
        model.config.toc = chosen


def _modality_features(model: CodebookModel, modality: str, manifest: str | list[str],
                       feature_cache: str | dict[str, str] | None, cache_dtype: str, cache_precision: str,
                       batch_size: int, num_workers: int) -> dict[str, SplitFeatures]:
    data = ManifestDataModule(manifest, (modality,), batch_size=batch_size, num_workers=num_workers,
                              feature_cache=feature_cache, cache_dtype=cache_dtype,
                              cache_precision=cache_precision, encoders=model.base.encoders)
    if feature_cache is not None:
        data.build_feature_cache()  # a cache that serves these records already is left as it is
    data.setup("fit")
    unlabelled = [r.where() for split in SPLITS for r in data.splits[split] if not r.fields.get("label")]
    if unlabelled:
        raise ValueError(f"{manifest}: {len(unlabelled)} records with {modality} have no `label` (first:"
                         f" {unlabelled[0]}); cross-modal generalization trains classifiers on labelled records")
    features = {}
    for split in SPLITS:
        records = data.splits[split]
        dataset, collate = data.pair_batches(split)
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate)
        codes, labels = [], []
        for batch in tqdm(loader, desc=f"{modality} codes ({split})", leave=False):
            size = batch["size"]
            labels += [records[i].fields["label"] for i in batch["owners"][modality][:size, 0].tolist()]
            encoded = model.base.encode(modality, batch["inputs"][modality])
            codes.append(model.codes_from_features(modality, encoded.features[:size], encoded.mask[:size]))
        features[split] = SplitFeatures(
            quantized=torch.cat([c.quantized for c in codes]),
            continuous=torch.cat([c.continuous for c in codes]),
            indices=torch.cat([c.indices for c in codes]),
            labels=labels,
        )
    return features
