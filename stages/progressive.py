"""A stage that starts from an earlier stage's model and trains several pairs at once: OneLLM's
progressive stages (new modalities added, the projection -- possibly turned into a mixture of
experts -- trained on the new pairs and replayed earlier ones), and OneEncoder's align stage as the
special case where only the new modality's parts train."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from oneencoder import ContrastiveLoss, EncoderConfig, HeadConfig, OneEncoder
from oneencoder.config import ProjectionConfig

from .pair_stage import PairStage

NEW = "new"  # in `trainable`: every part of the modalities this stage adds


@dataclass
class NewModality:
    """A modality a stage adds: its frozen encoder, its head (Alignment Layer) and, optionally, the
    modality whose trained modality token its own starts from (OneLLM starts new modalities' tokens
    from the image module's)."""

    encoder: EncoderConfig
    head: HeadConfig | None = None
    tokens_from: str | None = None


class ProgressiveStage(PairStage):
    """Loads `previous` (an earlier stage's output folder), adds the modalities in `add`, and trains
    the parts `trainable` names on every pair of `pairs`, one pair per batch (BalancedDataModule).

    `projection` with `kind: moe` turns a Universal Projection into a mixture of projection experts,
    each expert a copy of the trained UP (`experts_from_up`, OneLLM's initialisation) or freshly
    initialised. `trainable` lists parameter-name prefixes (`up`, `up.routers`, `heads`, `tokens.audio`,
    ...) and `new`, every part of the added modalities; None trains everything but the encoders.
    """

    def __init__(
        self,
        previous: str,
        pairs: Sequence[tuple[str, str]],
        add: dict[str, NewModality] | None = None,
        projection: ProjectionConfig | None = None,
        experts_from_up: bool = True,
        trainable: list[str] | None = None,
        loss: ContrastiveLoss | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        recall_ks: tuple[int, ...] = (1, 5, 10),
    ) -> None:
        model = OneEncoder.from_pretrained(Path(previous))
        if projection is not None and projection != model.config.projection:
            if model.config.projection.kind != "up":
                raise ValueError(
                    f"{previous} already has a {model.config.projection.kind} projection"
                    f" ({model.config.projection}); a stage can only turn a UP into a mixture, not change"
                    f" one: drop `projection` from this stage or start from a UP model"
                )
            model = model.to_mixture(projection, experts_from_up)
        for modality, new in (add or {}).items():
            model.add_modality(modality, new.encoder, new.head, new.tokens_from)
        if trainable is not None and NEW in trainable:
            parts = [part for modality in add or {} for part in model.modality_parts(modality)]
            if not parts:
                raise ValueError(f"`trainable` names {NEW!r} but this stage adds no modality (`add` is empty)")
            trainable = [p for p in trainable if p != NEW] + parts
        super().__init__(model, loss, pairs, optimizer, scheduler, recall_ks, trainable)
