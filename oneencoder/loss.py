"""Symmetric InfoNCE, with negatives from the global batch under DDP."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def gather_with_grad(embeddings: Tensor) -> Tensor:
    """Concatenate every process's rows in rank order; gradients flow back to each process's rows.

    `torch.distributed.nn.functional.all_gather` sums the incoming gradients over processes in its
    backward; DDP then averages parameter gradients, so the result equals one process on the global batch.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return embeddings
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(embeddings), dim=0)


class ContrastiveLoss(nn.Module):
    """Symmetric InfoNCE over L2-normalised embeddings, row i of `a` paired with row i of `b`.

    The logit scale is exp(`log_logit_scale`): OneEncoder fixes it at exp(2.5) (`learnable_scale=False`);
    CLIP learns it from log(1/0.07) and clamps the scale at `max_logit_scale` (100).
    """

    def __init__(
        self,
        log_logit_scale: float = 2.5,
        learnable_scale: bool = False,
        max_logit_scale: float = 100.0,
    ) -> None:
        super().__init__()
        self.log_logit_scale = nn.Parameter(torch.tensor(float(log_logit_scale)), requires_grad=learnable_scale)
        self.max_logit_scale = max_logit_scale

    @classmethod
    def clip(cls) -> ContrastiveLoss:
        return cls(log_logit_scale=math.log(1 / 0.07), learnable_scale=True)

    @property
    def logit_scale(self) -> Tensor:
        return self.log_logit_scale.exp().clamp(max=self.max_logit_scale)

    def forward(self, a: Tensor, b: Tensor) -> dict[str, Tensor]:
        """a, b: (batch, d) -> {"loss", "loss_a_to_b", "loss_b_to_a", "logit_scale"} (scalars)."""
        if a.shape != b.shape:
            raise ValueError(f"paired embeddings must have the same shape (got {tuple(a.shape)} and {tuple(b.shape)})")
        all_a, all_b = gather_with_grad(a), gather_with_grad(b)
        scale = self.logit_scale
        logits = scale * all_a @ all_b.T
        targets = torch.arange(logits.shape[0], device=logits.device)
        a_to_b = F.cross_entropy(logits, targets)
        b_to_a = F.cross_entropy(logits.T, targets)
        return {
            "loss": (a_to_b + b_to_a) / 2,
            "loss_a_to_b": a_to_b.detach(),
            "loss_b_to_a": b_to_a.detach(),
            "logit_scale": scale.detach(),
        }
