"""Whisper's audio encoder run by CTranslate2 (the form faster-whisper ships): speech as one 512-d
token per 20 ms (whisper-base).

Whisper was trained on 30-second windows, but its encoder runs on shorter ones (it only uses the
first positions of its embedding), and a window sized to the clips costs a fraction of 30 s: about
0.07 s for 5 s against 0.8 s for 30 s per clip on two CPU cores. Tokens past each clip's end (the
window's silent padding) are masked out.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..config import EncoderConfig
from .base import EncoderOutput, FrozenEncoder, Preprocessor, folder_digest
from .bundled import bundled_identity, is_bundled, resolve

log = logging.getLogger(__name__)

SAMPLING_RATE = 16000
SAMPLES_PER_TOKEN = 320  # 10 ms mel hop, then a stride-2 convolution
MAX_WINDOW_SECONDS = 30  # the length of Whisper's position embedding
WIDTHS = {"tiny": 384, "base": 512, "small": 768, "medium": 1024, "large": 1280}


class WhisperPreprocessor(Preprocessor):
    """16 kHz waveforms -> Whisper's 80-bin log-mel over a window of `window_seconds`, plus each
    clip's length in encoder tokens."""

    def __init__(self, max_seconds: float, num_mel_bins: int = 80) -> None:
        if not 0 < max_seconds <= MAX_WINDOW_SECONDS:
            raise ValueError(f"the whisper backend needs 0 < max_seconds <= {MAX_WINDOW_SECONDS} (got {max_seconds})")
        from transformers import WhisperFeatureExtractor

        self.max_seconds = max_seconds
        self.window_seconds = math.ceil(max_seconds)
        self.extractor = WhisperFeatureExtractor(feature_size=num_mel_bins, chunk_length=self.window_seconds)

    def __call__(self, items: Sequence[np.ndarray]) -> dict[str, Tensor]:
        limit = round(self.max_seconds * SAMPLING_RATE)
        waves = [np.asarray(x, dtype=np.float32)[:limit] for x in items]
        features = self.extractor(waves, sampling_rate=SAMPLING_RATE, return_tensors="pt")["input_features"]
        lengths = torch.tensor([max(1, math.ceil(len(w) / SAMPLES_PER_TOKEN)) for w in waves])
        return {"input_features": features, "lengths": lengths}

    def settings(self) -> dict[str, Any]:
        return {"max_seconds": self.max_seconds, "window_seconds": self.window_seconds,
                "extractor": self.extractor.to_dict()}

    def reader_settings(self) -> dict[str, Any]:
        return {"sampling_rate": SAMPLING_RATE, "max_seconds": self.max_seconds}

    def save_pretrained(self, folder: str) -> None:
        """Nothing to write: the settings live in the encoder's config."""


class CTranslate2WhisperEncoder(nn.Module):
    """A CTranslate2 Whisper model behind nn.Module's `to()`; it holds no torch parameters."""

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = folder
        self.device = torch.device("cpu")
        self.model = self._load("cpu")

    def _load(self, device: str) -> Any:
        import ctranslate2

        threads = torch.get_num_threads() if device == "cpu" else 1
        return ctranslate2.models.Whisper(self.folder, device=device, compute_type="float32", intra_threads=threads)

    def to(self, device: torch.device | str, *args: Any, **kwargs: Any) -> CTranslate2WhisperEncoder:
        import ctranslate2

        device = torch.device(device)
        if device.type == "cuda" and ctranslate2.get_cuda_device_count() == 0:
            log.info("ctranslate2 sees no CUDA device: the whisper encoder runs on the CPU")
            device = torch.device("cpu")
        if device.type != self.device.type:
            self.model = self._load(device.type)
            self.device = device
        return self

    def forward(self, features: Tensor) -> Tensor:
        import ctranslate2

        view = ctranslate2.StorageView.from_array(np.ascontiguousarray(features.float().cpu().numpy()))
        return torch.from_numpy(np.asarray(self.model.encode(view, to_cpu=True))).to(features.device)


class WhisperEncoder(FrozenEncoder):
    """`pretrained` is `bundled:whisper-base` or a CTranslate2 Whisper folder; `processor` takes
    `max_seconds` (default 10), which also sets the encoder's window."""

    kind = "audio"
    follows_autocast = False  # CTranslate2 runs it, in float32 (it has no bf16 on CPUs)

    def __init__(self, config: EncoderConfig) -> None:
        if config.pretrained is None:
            raise ValueError("the whisper backend loads pretrained weights only: set `pretrained: bundled:whisper-base`"
                             " or a CTranslate2 Whisper folder")
        if config.kind != "audio":
            raise ValueError(f"the whisper backend encodes audio, not {config.kind!r}")
        super().__init__(config)

    @property
    def dim(self) -> int:
        """Read off the model's size in its name (CTranslate2's config.json does not record it)."""
        name = self.config.pretrained.lower()
        sizes = [size for size in WIDTHS if size in name]
        if len(sizes) != 1:
            raise ValueError(
                f"cannot tell the width of the whisper model {self.config.pretrained!r}: its name must say"
                f" exactly one of {sorted(WIDTHS)} (as faster-whisper's folders do)"
            )
        return WIDTHS[sizes[0]]

    @property
    def folder(self) -> Path:
        return Path(resolve(self.config.pretrained))

    def _build_preprocessor(self) -> Preprocessor:
        return WhisperPreprocessor(**{"max_seconds": 10.0, **self.config.processor})

    def _load_module(self) -> nn.Module:
        if not (self.folder / "model.bin").is_file():
            raise FileNotFoundError(f"{self.folder / 'model.bin'} not found: `pretrained` must be a CTranslate2 Whisper folder")
        return CTranslate2WhisperEncoder(str(self.folder))

    def weights_identity(self) -> dict[str, Any]:
        if is_bundled(self.config.pretrained):
            return bundled_identity(self.config.pretrained)
        return {"folder_sha256": folder_digest(self.folder)}

    def encode(self, inputs: dict[str, Tensor]) -> EncoderOutput:
        tokens = self.module(inputs["input_features"])
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return EncoderOutput(tokens, positions[None, :] < inputs["lengths"].to(tokens.device)[:, None])

    def save_pretrained(self, folder: str) -> None:
        raise NotImplementedError("pretrained encoders are referenced by `pretrained`, never copied into a model folder")
