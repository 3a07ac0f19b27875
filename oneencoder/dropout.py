"""Dropout with cheap masks on the CPU: the same inverted dropout, its random numbers drawn in bulk.

On the CPU, torch's dropout draws one number from its Mersenne Twister per element (`bernoulli_`), one
at a time: in the Universal Projection's feed-forward (batch x tokens x 2048 activations) that was a
third of a cached training step in fp32 and nearly half in bf16 (`make bench`). Here one 64-bit draw
gives four 15-bit uniform numbers, and an element is dropped where its number is below p * 2^15:
the method's rate (rounded to 1/32768), its 1 / (1 - p) scaling and its places are kept, and the
numbers come from torch's generator, so a seed still fixes every mask. Other devices keep torch's
own dropout (fused and cheap on CUDA).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LEVELS = 1 << 15  # each 16-bit lane's low 15 bits: `random_()` fills int64 with [0, 2^63), the top bit is 0


class _CheapMaskDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, inputs: Tensor, p: float) -> Tensor:
        count = inputs.numel()
        draws = torch.empty((count + 3) // 4, dtype=torch.int64, device=inputs.device).random_()
        numbers = draws.view(torch.int16)[:count].view(inputs.shape).bitwise_and_(LEVELS - 1)
        mask = (numbers >= round(p * LEVELS)).to(inputs.dtype).mul_(1.0 / (1.0 - p))
        ctx.save_for_backward(mask)
        return inputs * mask

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (mask,) = ctx.saved_tensors
        return grad * mask, None


class CheapMaskDropout(nn.Dropout):
    """`nn.Dropout` (same rate, scaling, state dict and `eval()` behaviour) with masks drawn in bulk on
    the CPU; see the module's docstring for why."""

    def forward(self, inputs: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return inputs
        if inputs.device.type != "cpu" or self.p == 1.0:
            return F.dropout(inputs, self.p, True, self.inplace)
        return _CheapMaskDropout.apply(inputs, self.p)


def use_cheap_masks(layer: nn.TransformerEncoderLayer) -> nn.TransformerEncoderLayer:
    """Swap a torch transformer layer's three dropouts (feed-forward and both residual branches) for
    CheapMaskDropout; attention-weight dropout stays inside torch's attention kernel."""
    for name in ("dropout", "dropout1", "dropout2"):
        setattr(layer, name, CheapMaskDropout(getattr(layer, name).p))
    return layer
