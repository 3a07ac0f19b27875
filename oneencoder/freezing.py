"""The one place where modules are frozen: no gradients, eval mode.

`freeze` is for what never trains (the encoders); a stage names what trains with `set_trainable`
and keeps the rest computing as it was trained with `frozen_to_eval` after every `train()`.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch
from torch import nn


def freeze(module: nn.Module) -> nn.Module:
    """Stop gradients and switch dropout and friends off; returns the module for chaining."""
    module.requires_grad_(False)
    module.eval()
    return module


def set_trainable(module: nn.Module, prefixes: Sequence[str]) -> None:
    """Parameters named `prefix` or `prefix.<...>` require grad, all others do not. A prefix that
    matches no parameter is a typo in a stage's `trainable` setting: said, with the valid names."""
    names = [name for name, _ in module.named_parameters()]
    unmatched = [prefix for prefix in prefixes if not any(_is_under(name, prefix) for name in names)]
    if unmatched:
        raise ValueError(
            f"trainable names {unmatched} match no parameter; valid module names (any deeper one works"
            f" too): {_module_names(module)}"
        )
    for name, parameter in module.named_parameters():
        parameter.requires_grad_(any(_is_under(name, prefix) for prefix in prefixes))


def frozen_to_eval(module: nn.Module) -> None:
    """Every submodule whose parameters are all frozen goes to eval mode (dropout off), so a frozen
    part computes exactly as it did when it was trained; call it after `module.train()`."""
    for submodule in module.modules():
        parameters = list(submodule.parameters())
        if parameters and not any(p.requires_grad for p in parameters):
            submodule.eval()


def _is_under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _module_names(module: nn.Module, depth: int = 3) -> list[str]:
    """Names of the submodules with parameters, down to `depth` dotted parts (the ones worth naming)."""
    return [
        name for name, submodule in module.named_modules()
        if name and name.count(".") < depth and next(submodule.parameters(), None) is not None
    ]


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
