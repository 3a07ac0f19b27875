"""Stage 2+ of OneEncoder: add one modality to a trained model by training only its Alignment Layer
and modality token against an already aligned anchor modality; everything trained before is frozen."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from oneencoder import ContrastiveLoss, EncoderConfig, HeadConfig
from oneencoder.model import read_config

from .progressive import NEW, NewModality, ProgressiveStage


class AlignStage(ProgressiveStage):
    """Loads `previous`, adds `modality` (its frozen `encoder`, a new Alignment Layer shaped by `head`
    and a new modality token) and trains only those on (modality, anchor) pairs.

    Frozen parts stay in eval mode while the new ones train, so the shared projection sees the new
    modality exactly as it serves the old ones; their weights never change, and so neither do the
    old modalities' embeddings.
    """

    def __init__(
        self,
        previous: str,
        modality: str,
        encoder: EncoderConfig,
        anchor: str = "text",
        head: HeadConfig | None = None,
        loss: ContrastiveLoss | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        recall_ks: tuple[int, ...] = (1, 5, 10),
    ) -> None:
        aligned = list(read_config(Path(previous)).encoders)
        if anchor not in aligned:
            raise ValueError(
                f"anchor {anchor!r} is not aligned in {previous} (it has {aligned}); the anchor"
                " must be a modality an earlier stage trained"
            )
        super().__init__(previous, [(modality, anchor)], {modality: NewModality(encoder, head)}, trainable=[NEW],
                         loss=loss, optimizer=optimizer, scheduler=scheduler, recall_ks=recall_ks)
