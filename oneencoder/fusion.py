"""Ways to tell the shared projection which modality it is looking at."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import FUSIONS


class TokenFusion(nn.Module):
    """Combine a modality's tokens (batch, length, d) with its modality tokens (num_tokens, d).

    add / multiply: the first modality token is broadcast over every position.
    concat: the modality tokens are prepended; `strip` removes them again after the projection, as
        OneEncoder pools only the content tokens.
    resample: prepended like concat, but `strip` keeps only them (OneLLM's resample tokens): the
        embedding is the mean of what they gathered from the content tokens in the projection.
    cross_attention: the modality tokens query the content tokens; the sequence becomes the
        attention output, one position per modality token.
    Returns the fused tokens and their mask (True = real token).
    """

    def __init__(self, mode: str, dim: int, num_heads: int) -> None:
        super().__init__()
        if mode not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS} (got {mode!r})")
        self.mode = mode
        self.attention = nn.MultiheadAttention(dim, num_heads, batch_first=True) if mode == "cross_attention" else None

    def forward(self, tokens: Tensor, mask: Tensor, modality_tokens: Tensor) -> tuple[Tensor, Tensor]:
        if self.mode == "add":
            return tokens + modality_tokens[0], mask
        if self.mode == "multiply":
            return tokens * modality_tokens[0], mask
        batch = tokens.shape[0]
        queries = modality_tokens.unsqueeze(0).expand(batch, -1, -1)
        query_mask = torch.ones(queries.shape[:2], dtype=torch.bool, device=mask.device)
        if self.mode in ("concat", "resample"):
            return torch.cat([queries, tokens], dim=1), torch.cat([query_mask, mask], dim=1)
        attended, _ = self.attention(queries, tokens, tokens, key_padding_mask=~mask, need_weights=False)
        return attended, query_mask

    def strip(self, tokens: Tensor, mask: Tensor, num_modality_tokens: int) -> tuple[Tensor, Tensor]:
        """After the projection: concat drops the prepended modality tokens, resample keeps only them."""
        if self.mode == "concat":
            return tokens[:, num_modality_tokens:], mask[:, num_modality_tokens:]
        if self.mode == "resample":
            return tokens[:, :num_modality_tokens], mask[:, :num_modality_tokens]
        return tokens, mask
