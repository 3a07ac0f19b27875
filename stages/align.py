"""Stage 2+ of OneEncoder: add one modality to a trained model by training only its Alignment Layer
and modality token against an already aligned anchor modality; everything trained before is frozen."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from oneencoder import ContrastiveLoss, EncoderConfig, HeadConfig, OneEncoder
from oneencoder.freezing import freeze

from .pair_stage import PairStage


class AlignStage(PairStage):
    """Loads `previous` (an earlier stage's output folder), freezes all of it (heads, tokens, fusion,
    Universal Projection) and adds `modality`: its frozen `encoder`, a new Alignment Layer shaped by
    `head` and a new modality token, trained on (modality, anchor) pairs.

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
        model = OneEncoder.from_pretrained(Path(previous))
        if anchor not in model.modalities:
            raise ValueError(
                f"anchor {anchor!r} is not aligned in {previous} (it has {model.modalities}); the anchor"
                " must be a modality an earlier stage trained"
            )
        frozen_modalities = tuple(model.modalities)
        freeze(model)
        model.add_modality(modality, encoder, head)
        super().__init__(model, loss, (modality, anchor), optimizer, scheduler, recall_ks)
        self.frozen_modalities = frozen_modalities

    def train(self, mode: bool = True) -> AlignStage:
        super().train(mode)
        model = self.model
        for module in (model.fusion, model.up, *(model.heads[m] for m in self.frozen_modalities),
                       *(model.tokens[m] for m in self.frozen_modalities)):
            module.eval()
        return self
