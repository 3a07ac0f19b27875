"""Frozen encoders behind one protocol: raw items -> token features + padding mask."""

from __future__ import annotations

from typing import Callable

from ..config import EncoderConfig
from .base import EncoderOutput, FrozenEncoder, Preprocessor
from .efficientnet import EfficientNetEncoder
from .transformers_backend import EncoderLoadError, build_transformers_encoder
from .whisper import WhisperEncoder

BACKENDS: dict[str, Callable[[EncoderConfig], FrozenEncoder]] = {
    "transformers": build_transformers_encoder,
    "efficientnet": EfficientNetEncoder,
    "whisper": WhisperEncoder,
}


def build_encoder(config: EncoderConfig) -> FrozenEncoder:
    if config.backend not in BACKENDS:
        raise ValueError(f"unknown encoder backend {config.backend!r}; valid backends: {sorted(BACKENDS)}")
    return BACKENDS[config.backend](config)


__all__ = ["BACKENDS", "EncoderLoadError", "EncoderOutput", "FrozenEncoder", "Preprocessor", "build_encoder"]
