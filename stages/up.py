"""Stage 1 of OneEncoder: train the per-modality heads, modality tokens and the Universal Projection
on pairs of two modalities (image-text) with the encoders frozen."""

from __future__ import annotations

from .pair_stage import PairStage


class UPStage(PairStage):
    """Everything in `model` but its frozen encoders trains (heads, modality tokens, fusion, UP)."""
