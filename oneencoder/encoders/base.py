"""The frozen-encoder protocol every backend implements."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
from torch import Tensor, nn

from ..config import EncoderConfig
from ..freezing import freeze


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

    def reader_settings(self) -> dict[str, Any]:
        """What the file reader must produce for it: `sampling_rate` and `max_seconds` for audio,
        `num_frames` and `frame_stride` for video, nothing for text and images."""
        return {}


class FrozenEncoder(ABC):
    """A pretrained encoder that is never trained, described cheaply and loaded on first use.

    Construction reads configs only and builds the weight-free preprocessor, so a stage that trains
    from a feature cache never loads the weights. Once loaded, the weights stay outside any parent
    nn.Module: never in checkpoints, optimizers, DDP broadcasts, `.train()` calls or dtype casts.
    """

    kind: ClassVar[str]
    follows_autocast: ClassVar[bool] = True  # False where the weights run outside torch, out of autocast's reach

    def __init__(self, config: EncoderConfig) -> None:
        self.config = config
        self.preprocessor = self._build_preprocessor()
        self._module: nn.Module | None = None
        self._device = torch.device("cpu")

    @property
    @abstractmethod
    def dim(self) -> int:
        """Width of the token features (read from the config, without loading weights)."""

    @abstractmethod
    def _build_preprocessor(self) -> Preprocessor: ...

    @abstractmethod
    def _load_module(self) -> nn.Module:
        """Build or read the weights (the expensive part)."""

    @abstractmethod
    def weights_identity(self) -> dict[str, Any]:
        """What identifies the weights without loading them (a hub commit, a folder hash, a seed)."""

    @abstractmethod
    def encode(self, inputs: dict[str, Tensor]) -> EncoderOutput:
        """Model inputs -> token features and padding mask; uses `self.module`."""

    @abstractmethod
    def save_pretrained(self, folder: str) -> None:
        """Write weights and preprocessing so that `EncoderConfig(pretrained=folder)` rebuilds it."""

    @property
    def module(self) -> nn.Module:
        """The frozen weights, loaded on first access."""
        if self._module is None:
            self._module = freeze(self._load_module()).to(self._device)
        return self._module

    @property
    def is_loaded(self) -> bool:
        return self._module is not None

    def unload(self) -> None:
        """Free the weights (after a cache build); the next use loads them again."""
        self._module = None

    def to(self, device: torch.device | str) -> FrozenEncoder:
        """Move the weights (loading them if needed); a no-op when they are already there."""
        device = torch.device(device)
        if self._module is None or device != self._device:
            self._device = device
            self.module.to(device)
        return self

    def preprocess(self, items: Sequence[Any]) -> dict[str, Tensor]:
        return self.preprocessor(items)

    @torch.no_grad()
    def __call__(self, inputs: dict[str, Tensor]) -> EncoderOutput:
        return self.encode(inputs)

    @cached_property
    def fingerprint(self) -> str:
        """Identity of weights plus preprocessing: equal fingerprints give equal features."""
        described = json.dumps(self.description, sort_keys=True, default=str)
        return f"{self.kind}-{hashlib.sha256(described.encode()).hexdigest()[:16]}"

    def encoding_settings(self) -> dict[str, Any]:
        """How `encode` runs a batch, where that changes the features; empty for most encoders."""
        return {}

    @cached_property
    def description(self) -> dict[str, Any]:
        """What the fingerprint hashes; a feature cache stores it to say what differs."""
        described = {
            "class": type(self).__name__,
            "weights": self.weights_identity(),
            "preprocessing": self.preprocessor.settings(),
        }
        encoding = self.encoding_settings()
        # Only when set, so the fingerprints (and feature caches) of every other encoder stay valid.
        return {**described, "encoding": encoding} if encoding else described


def folder_digest(path: str | Path) -> str:
    """sha256 over every file's relative name and content: a local model folder's (or weights
    file's) identity."""
    path = Path(path)
    folder, files = (path, sorted(p for p in path.rglob("*") if p.is_file())) if path.is_dir() else (path.parent, [path])
    return _files_digest(tuple((str(p.relative_to(folder)), str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))


@lru_cache(maxsize=32)
def _files_digest(files: tuple[tuple[str, str, int, int], ...]) -> str:
    # Keyed by size and mtime too, so a process hashes an unchanged folder once.
    digest = hashlib.sha256()
    for name, path, _, _ in files:
        digest.update(name.encode())
        with open(path, "rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()
