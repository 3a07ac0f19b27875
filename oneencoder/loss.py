"""Symmetric InfoNCE, with negatives from the global batch under DDP."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def process_sizes(rows: int, device: torch.device) -> list[int]:
    """Every process's row count, in rank order: batches differ in size when records are skipped."""
    if not _distributed():
        return [rows]
    local = torch.tensor([rows], dtype=torch.long, device=device)
    sizes = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, local)
    return torch.cat(sizes).tolist()


def gather_with_grad(embeddings: Tensor, sizes: list[int]) -> Tensor:
    """Concatenate every process's rows in rank order; gradients flow back to each process's rows.

    embeddings: (sizes[rank], d), sizes from `process_sizes`. Collectives need equal shapes, so each
    process pads to the largest batch and the padding is cut off after gathering; a process with no
    rows still takes part. `torch.distributed.nn.functional.all_gather` sums the incoming gradients
    over processes in its backward; DDP then averages parameter gradients, so the result equals one
    process on the global batch.
    """
    if len(sizes) == 1 or max(sizes) == 0:
        return embeddings
    from torch.distributed.nn.functional import all_gather

    padded = F.pad(embeddings, (0, 0, 0, max(sizes) - len(embeddings)))
    return torch.cat([rows[:size] for rows, size in zip(all_gather(padded), sizes)], dim=0)


class ContrastiveLoss(nn.Module):
    """Symmetric InfoNCE over L2-normalised embeddings, row i of `a` paired with row i of `b`.

    The logit scale is exp(`log_logit_scale`): OneEncoder fixes it at exp(2.5) (`learnable_scale=False`);
    CLIP learns it from log(1/0.07) and caps it at `max_logit_scale` (100) by clamping the parameter
    after each optimiser step (`clamp_`), not in the forward pass, where the clamp would zero the
    scale's gradient at the cap.
    """

    def __init__(
        self,
        log_logit_scale: float = 2.5,
        learnable_scale: bool = False,
        max_logit_scale: float = 100.0,
    ) -> None:
        super().__init__()
        if log_logit_scale > math.log(max_logit_scale):
            raise ValueError(
                f"log_logit_scale {log_logit_scale} gives a scale of {math.exp(log_logit_scale):.4g}, above"
                f" max_logit_scale {max_logit_scale}; lower it or raise max_logit_scale"
            )
        self.log_logit_scale = nn.Parameter(torch.tensor(float(log_logit_scale)), requires_grad=learnable_scale)
        self.max_logit_scale = max_logit_scale

    @classmethod
    def clip(cls) -> ContrastiveLoss:
        return cls(log_logit_scale=math.log(1 / 0.07), learnable_scale=True)

    @property
    def logit_scale(self) -> Tensor:
        return self.log_logit_scale.exp()

    @torch.no_grad()
    def clamp_(self) -> None:
        """Pull the scale back to `max_logit_scale`; the training loop calls this after every optimiser step."""
        self.log_logit_scale.clamp_(max=math.log(self.max_logit_scale))

    def forward(self, a: Tensor, b: Tensor) -> dict[str, Tensor]:
        """a, b: (batch, d) -> {"loss", "loss_a_to_b", "loss_b_to_a", "logit_scale"} (scalars).

        Under DDP every process computes the loss of the global batch; a process may bring no rows
        (every record of its batch skipped), and it must still call this so that the others' gathers
        are matched. With no rows anywhere the loss is a zero still tied to `a`, `b` and the scale.
        """
        if a.shape != b.shape:
            raise ValueError(f"paired embeddings must have the same shape (got {tuple(a.shape)} and {tuple(b.shape)})")
        # float32 on every process: a gather needs one dtype, and an empty batch has no autocast output.
        sizes = process_sizes(len(a), a.device)
        all_a, all_b = gather_with_grad(a.float(), sizes), gather_with_grad(b.float(), sizes)
        scale = self.logit_scale
        # In fp32 under autocast too: bf16 keeps 8 significant bits, so a cosine near 0.5 is rounded to
        # 1/512, which a learnt scale of 50 turns into logits 0.1 apart (the loss off by about 1e-3).
        with torch.autocast(a.device.type, enabled=False):
            logits = scale * all_a @ all_b.T
        if sum(sizes) == 0:
            zero = logits.sum()  # 0, with a graph through the scale, `a` and `b` for backward
            detached = zero.detach()
            return {"loss": zero, "loss_a_to_b": detached, "loss_b_to_a": detached, "logit_scale": scale.detach()}
        targets = torch.arange(logits.shape[0], device=logits.device)
        a_to_b = F.cross_entropy(logits, targets)
        b_to_a = F.cross_entropy(logits.T, targets)
        return {
            "loss": (a_to_b + b_to_a) / 2,
            "loss_a_to_b": a_to_b.detach(),
            "loss_b_to_a": b_to_a.detach(),
            "logit_scale": scale.detach(),
        }
