"""The Universal Projection shared by all modalities, and padding-aware pooling."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class UniversalProjection(nn.Module):
    """LayerNorm, then a transformer encoder, with a residual: enc(LN(x)) + x (OneEncoder's UP)."""

    def __init__(self, dim: int, num_layers: int, num_heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        layer = nn.TransformerEncoderLayer(dim, num_heads, ff_dim, dropout, batch_first=True)
        # The nested-tensor fast path changes results with padding; keep one numeric path.
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """tokens (batch, length, dim), mask (batch, length) True = real -> (batch, length, dim)."""
        return self.encoder(self.norm(tokens), src_key_padding_mask=~mask) + tokens


def masked_mean(tokens: Tensor, mask: Tensor) -> Tensor:
    """Mean over real tokens only: (batch, length, dim), (batch, length) -> (batch, dim).

    The original OneEncoder averages padding too, so a caption's embedding depends on the longest
    caption in its batch; this does not.
    """
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def normalize(embeddings: Tensor) -> Tensor:
    return F.normalize(embeddings, dim=-1)
