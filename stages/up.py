"""Stage 1 of OneEncoder: train the per-modality heads, modality tokens and the Universal Projection
on pairs of two modalities (image-text) with the encoders frozen."""

from __future__ import annotations

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from oneencoder import ContrastiveLoss, OneEncoder

from .pair_stage import PairStage


class UPStage(PairStage):
    """Everything in `model` but its frozen encoders trains (heads, modality tokens, fusion, UP) on `pair`."""

    def __init__(
        self,
        model: OneEncoder,
        loss: ContrastiveLoss | None = None,
        pair: tuple[str, str] = ("image", "text"),
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        recall_ks: tuple[int, ...] = (1, 5, 10),
    ) -> None:
        super().__init__(model, loss, [pair], optimizer, scheduler, recall_ks)
