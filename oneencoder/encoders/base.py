"""The frozen-encoder protocol every backend implements."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..freezing import state_fingerprint


@dataclass
class EncoderOutput:
    """Token features of a batch.

    features: (batch, length, dim) float.
    mask: (batch, length) bool, True where a token is real and False where it is padding.
    """

    features: Tensor
    mask: Tensor


class Preprocessor(ABC):
    """The model-free half of an encoder: raw items (strings, PIL images, waveforms, frame lists) ->
    batched model inputs. It runs in dataloader workers, so it holds no weights and pickles cheaply."""

    @abstractmethod
    def __call__(self, items: Sequence[Any]) -> dict[str, Tensor]:
        """Raw items -> batched model inputs (padded where lengths differ)."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Everything that changes the inputs it makes (part of the encoder's fingerprint)."""

    @abstractmethod
    def save_pretrained(self, folder: str) -> None:
        """Write its files beside the model's."""


class FrozenEncoder(nn.Module, ABC):
    """A pretrained encoder that is never trained: eval mode, no gradients, whatever `train()` says.

    Subclasses build their model and `preprocessor`, then call `freeze(self)` once.
    """

    kind: str
    preprocessor: Preprocessor

    def train(self, mode: bool = True) -> FrozenEncoder:
        # Lightning calls .train() on the whole LightningModule at the start of every epoch; a frozen
        # encoder must stay in eval mode so that dropout and SpecAugment never run.
        return super().train(False)

    @property
    @abstractmethod
    def dim(self) -> int:
        """Width of the token features."""

    def preprocess(self, items: Sequence[Any]) -> dict[str, Tensor]:
        return self.preprocessor(items)

    @abstractmethod
    def encode(self, inputs: dict[str, Tensor]) -> EncoderOutput:
        """Model inputs -> token features and padding mask."""

    @abstractmethod
    def save_pretrained(self, folder: str) -> None:
        """Write weights and preprocessing so that `EncoderConfig(pretrained=folder)` rebuilds it."""

    @torch.no_grad()
    def forward(self, inputs: dict[str, Tensor]) -> EncoderOutput:
        return self.encode(inputs)

    @cached_property
    def fingerprint(self) -> str:
        """Identity of weights plus preprocessing: equal fingerprints give equal features."""
        settings = json.dumps(
            {"class": type(self).__name__, "preprocessing": self.preprocessor.settings()},
            sort_keys=True,
            default=str,
        )
        digest = hashlib.sha256(settings.encode())
        digest.update(state_fingerprint(self).encode())
        return f"{self.kind}-{digest.hexdigest()[:16]}"
