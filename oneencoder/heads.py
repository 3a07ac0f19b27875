"""Small per-modality layers: the projection head (also the shape of an Alignment Layer) and the
learnable modality token."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dropout import CheapMaskDropout


class ProjectionHead(nn.Module):
    """Per token: Linear(in -> hidden), GELU, Linear(hidden -> d), Dropout, LayerNorm (OneEncoder's head
    and Alignment Layer, with hidden = d).

    With `max_positions`, a learned position embedding is added to the output tokens: where the
    encoder sees items one at a time (a video's frames through an image encoder), this is what tells
    the shared projection the order of the tokens.
    """

    def __init__(
        self, in_dim: int, out_dim: int, dropout: float = 0.1, hidden_dim: int | None = None,
        max_positions: int | None = None, pool: int = 1,
    ) -> None:
        super().__init__()
        self.pool = pool
        hidden_dim = hidden_dim or out_dim
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, out_dim),
            CheapMaskDropout(dropout),
            nn.LayerNorm(out_dim),
        )
        self.positions = None if max_positions is None else nn.Parameter(torch.zeros(max_positions, out_dim))
        if self.positions is not None:
            nn.init.normal_(self.positions, std=0.02)

    def forward(self, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(batch, length, in_dim), mask (batch, length) -> (batch, ceil(length / pool), out_dim) and its mask."""
        if self.pool > 1:
            tokens, mask = pool_tokens(tokens, mask, self.pool)
        projected = self.net(tokens)
        if self.positions is None:
            return projected, mask
        length = projected.shape[1]
        if length > len(self.positions):
            raise ValueError(
                f"{length} tokens but the position embedding has {len(self.positions)} positions: raise the"
                " head's `max_positions` or feed fewer frames"
            )
        return projected + self.positions[:length], mask


def pool_tokens(tokens: Tensor, mask: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Average each run of `size` consecutive tokens, padding left out: (batch, length, dim) ->
    (batch, ceil(length / size), dim); a pooled token is real when any token of its run is."""
    batch, length, dim = tokens.shape
    pad = -length % size
    weights = F.pad(mask.to(tokens.dtype), (0, pad)).view(batch, -1, size, 1)
    runs = F.pad(tokens, (0, 0, 0, pad)).view(batch, -1, size, dim)
    counts = weights.sum(2)
    return (runs * weights).sum(2) / counts.clamp_min(1.0), counts.squeeze(-1) > 0


class ModalityToken(nn.Module):
    """Learnable small vectors lifted to d by an MLP with ReLU and a final LayerNorm.

    OneEncoder learns a 3-d vector per modality and maps it 3 -> 64 -> 128 -> d, which keeps the
    number of new parameters per modality tiny.
    """

    def __init__(self, num_tokens: int, token_dim: int, hidden_dims: Sequence[int], out_dim: int) -> None:
        super().__init__()
        self.vectors = nn.Parameter(torch.randn(num_tokens, token_dim))
        layers: list[nn.Module] = []
        widths = [token_dim, *hidden_dims]
        for width_in, width_out in zip(widths, widths[1:]):
            layers += [nn.Linear(width_in, width_out), nn.ReLU()]
        layers += [nn.Linear(widths[-1], out_dim), nn.LayerNorm(out_dim)]
        self.mlp = nn.Sequential(*layers)

    def forward(self) -> Tensor:
        """-> (num_tokens, out_dim)."""
        return self.mlp(self.vectors)
