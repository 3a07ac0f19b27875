"""The one place where modules are frozen: no gradients, eval mode."""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def freeze(module: nn.Module) -> nn.Module:
    """Stop gradients and switch dropout and friends off; returns the module for chaining."""
    module.requires_grad_(False)
    module.eval()
    return module


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def state_fingerprint(module: nn.Module) -> str:
    """A hash of every parameter and buffer: equal hashes mean bit-identical weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
