"""The shared projection -- OneEncoder's Universal Projection, or OneLLM's mixture of such
projections with a router per modality -- and padding-aware pooling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ProjectionConfig
from .dropout import use_cheap_masks


class UniversalProjection(nn.Module):
    """LayerNorm, then a transformer encoder, with a residual: enc(LN(x)) + x (OneEncoder's UP)."""

    def __init__(self, dim: int, num_layers: int, num_heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        layer = use_cheap_masks(nn.TransformerEncoderLayer(dim, num_heads, ff_dim, dropout, batch_first=True))
        # The nested-tensor fast path changes results with padding; keep one numeric path.
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)

    def forward(self, tokens: Tensor, mask: Tensor, modality: str | None = None) -> Tensor:
        """tokens (batch, length, dim), mask (batch, length) True = real -> (batch, length, dim).
        `modality` is accepted so that callers treat every projection alike; one UP serves all."""
        return self.encoder(self.norm(tokens), src_key_padding_mask=~mask) + tokens


class ModalityRouter(nn.Module):
    """Per token, how much each expert counts for one modality (OneLLM's modality router).

    soft: an MLP d -> hidden -> K with GELU; weights = sigmoid(scores) / their sum, so every expert
        keeps a positive share (dense, unlike a top-1 router).
    constant: 1/K for every expert and token, with no parameters (OneLLM's ablation).
    """

    def __init__(self, dim: int, hidden_dim: int, experts: int, kind: str = "soft") -> None:
        super().__init__()
        self.experts = experts
        self.scores = (
            nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, experts))
            if kind == "soft" else None
        )

    def forward(self, tokens: Tensor) -> Tensor:
        """(batch, length, dim) -> (batch, length, K) weights, positive, summing to 1 per token."""
        if self.scores is None:
            return tokens.new_full((*tokens.shape[:-1], self.experts), 1.0 / self.experts)
        gates = torch.sigmoid(self.scores(tokens))
        return gates / gates.sum(-1, keepdim=True)


class MixtureProjection(nn.Module):
    """K Universal Projections mixed per token by the modality's router (OneLLM's universal
    projection module). Dense: every expert runs on every token."""

    def __init__(self, dim: int, num_layers: int, num_heads: int, ff_dim: int, dropout: float,
                 config: ProjectionConfig, modalities: list[str]) -> None:
        super().__init__()
        self.dim, self.config = dim, config
        self.experts = nn.ModuleList(
            UniversalProjection(dim, num_layers, num_heads, ff_dim, dropout) for _ in range(config.experts)
        )
        self.routers = nn.ModuleDict()
        for modality in modalities:
            self.add_router(modality)

    def add_router(self, modality: str) -> None:
        """A fresh router for a new modality, on the experts' device."""
        hidden_dim = self.config.router_hidden_dim or 4 * self.dim
        router = ModalityRouter(self.dim, hidden_dim, len(self.experts), self.config.router)
        reference = next(self.experts.parameters())
        self.routers[modality] = router.to(device=reference.device, dtype=reference.dtype)

    def weights(self, tokens: Tensor, modality: str) -> Tensor:
        """(batch, length, dim) -> (batch, length, K): the modality's router weights per token."""
        if modality not in self.routers:
            raise KeyError(f"no router for modality {modality!r}; the projection routes {sorted(self.routers)}")
        return self.routers[modality](tokens)

    def forward(self, tokens: Tensor, mask: Tensor, modality: str | None = None) -> Tensor:
        """sum_k w_k(token) * expert_k(tokens, mask): (batch, length, dim) -> (batch, length, dim)."""
        if modality is None:
            raise ValueError("a mixture projection routes by modality: pass the modality of the tokens")
        weights = self.weights(tokens, modality)
        mixed = weights[..., 0:1] * self.experts[0](tokens, mask)
        for k in range(1, len(self.experts)):
            mixed = mixed + weights[..., k : k + 1] * self.experts[k](tokens, mask)
        return mixed


def masked_mean(tokens: Tensor, mask: Tensor) -> Tensor:
    """Mean over real tokens only: (batch, length, dim), (batch, length) -> (batch, dim).

    The original OneEncoder averages padding too, so a caption's embedding depends on the longest
    caption in its batch; this does not.
    """
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def normalize(embeddings: Tensor) -> Tensor:
    return F.normalize(embeddings, dim=-1)
