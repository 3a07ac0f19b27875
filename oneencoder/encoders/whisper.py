"""Whisper's audio encoder, its weights read from the CTranslate2 form that faster-whisper ships and run
by torch: speech as one 512-d token per 20 ms (whisper-base).

Whisper was trained on 30-second windows, but its encoder runs on shorter ones (it only uses the
first positions of its embedding), and a window sized to the clips costs a fraction of 30 s: about
0.07 s for 5 s against 0.8 s for 30 s per clip on two CPU cores. Tokens past each clip's end (the
window's silent padding) are masked out.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..config import EncoderConfig
from .base import EncoderOutput, FrozenEncoder, Preprocessor, folder_digest
from .bundled import bundled_identity, is_bundled, resolve

SAMPLING_RATE = 16000
SAMPLES_PER_TOKEN = 320  # 10 ms mel hop, then a stride-2 convolution
MAX_WINDOW_SECONDS = 30  # the length of Whisper's position embedding
WIDTHS = {"tiny": 384, "base": 512, "small": 768, "medium": 1024, "large": 1280}
CT2_BINARY_VERSION = 6
CT2_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16)  # CTranslate2's DataType order (bf16 next)


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


def read_ctranslate2_variables(path: Path) -> dict[str, Tensor]:
    """The named tensors of a CTranslate2 `model.bin` (binary format 6, which CTranslate2 4 writes).

    CTranslate2 runs only fp32 (or int8) on CPUs; read into torch, the same weights run under bf16
    autocast where the machine has fast bf16 (about twice as fast as CTranslate2's fp32 on a 2-core
    AMX Xeon), and on any torch device.
    """
    data = path.read_bytes()
    position = 0

    def take(layout: str) -> Any:
        nonlocal position
        (value,) = struct.unpack_from(layout, data, position)
        position += struct.calcsize(layout)
        return value

    def text() -> str:
        nonlocal position
        size = take("H")  # bytes with the closing NUL
        value = data[position : position + size - 1].decode()
        position += size
        return value

    version = take("I")
    if version != CT2_BINARY_VERSION:
        raise ValueError(f"{path}: CTranslate2 binary format {version}, this reader reads format {CT2_BINARY_VERSION}"
                         " (CTranslate2 4.x): convert the model again with a CTranslate2 4 converter")
    text(), take("I")  # the spec's name and revision
    variables = {}
    for _ in range(take("I")):
        name = text()
        shape = [take("I") for _ in range(take("B"))]
        type_id, size = take("B"), take("I")
        if type_id >= len(CT2_DTYPES) or name.endswith("weight_scale"):
            raise ValueError(f"{path}: {name} is quantized or bf16; this reader takes float32 and float16 models"
                             " (convert with `--quantization float16`, as faster-whisper's models are)")
        dtype = CT2_DTYPES[type_id]
        variables[name] = torch.from_numpy(np.frombuffer(data, dtype, size // dtype().itemsize, position).copy()).view(shape)
        position += size
    return variables


def whisper_encoder_from_ctranslate2(folder: Path, tokens: int) -> nn.Module:
    """transformers' Whisper encoder holding a CTranslate2 Whisper model's encoder weights, for windows
    of `tokens` tokens (the first `tokens` rows of the position table)."""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder as TorchWhisperEncoder

    weights = {name.removeprefix("encoder/"): value.float()
               for name, value in read_ctranslate2_variables(folder / "model.bin").items() if name.startswith("encoder/")}
    layers = sum(name.endswith("/ffn/linear_0/weight") for name in weights)
    width, mel_bins, _ = weights["conv1/weight"].shape
    config = WhisperConfig(d_model=width, num_mel_bins=mel_bins, encoder_layers=layers,
                           encoder_attention_heads=int(weights["num_heads"]),
                           encoder_ffn_dim=weights["layer_0/ffn/linear_0/weight"].shape[0], max_source_positions=tokens)
    state = {"embed_positions.weight": weights["position_encodings/encodings"][:tokens],
             **{f"{name}.{kind}": weights[f"{name}/{kind}"] for name in ("conv1", "conv2") for kind in ("weight", "bias")},
             **_layer_norm("layer_norm", weights, "layer_norm")}
    for index in range(layers):
        ours, theirs = f"layers.{index}", f"layer_{index}"
        query, key, value = weights[f"{theirs}/self_attention/linear_0/weight"].chunk(3)
        query_bias, _, value_bias = weights[f"{theirs}/self_attention/linear_0/bias"].chunk(3)  # keys have no bias
        state |= {
            f"{ours}.self_attn.q_proj.weight": query, f"{ours}.self_attn.q_proj.bias": query_bias,
            f"{ours}.self_attn.k_proj.weight": key,
            f"{ours}.self_attn.v_proj.weight": value, f"{ours}.self_attn.v_proj.bias": value_bias,
            **_linear(f"{ours}.self_attn.out_proj", weights, f"{theirs}/self_attention/linear_1"),
            **_layer_norm(f"{ours}.self_attn_layer_norm", weights, f"{theirs}/self_attention/layer_norm"),
            **_linear(f"{ours}.fc1", weights, f"{theirs}/ffn/linear_0"),
            **_linear(f"{ours}.fc2", weights, f"{theirs}/ffn/linear_1"),
            **_layer_norm(f"{ours}.final_layer_norm", weights, f"{theirs}/ffn/layer_norm"),
        }
    module = TorchWhisperEncoder(config)
    module.load_state_dict(state)
    return module.eval()


def _linear(ours: str, weights: dict[str, Tensor], theirs: str) -> dict[str, Tensor]:
    return {f"{ours}.weight": weights[f"{theirs}/weight"], f"{ours}.bias": weights[f"{theirs}/bias"]}


def _layer_norm(ours: str, weights: dict[str, Tensor], theirs: str) -> dict[str, Tensor]:
    return {f"{ours}.weight": weights[f"{theirs}/gamma"], f"{ours}.bias": weights[f"{theirs}/beta"]}


class WhisperEncoder(FrozenEncoder):
    """`pretrained` is `bundled:whisper-base` or a CTranslate2 Whisper folder; `processor` takes
    `max_seconds` (default 10), which also sets the encoder's window."""

    kind = "audio"

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
        tokens = round(self.preprocessor.window_seconds * SAMPLING_RATE / SAMPLES_PER_TOKEN)
        return whisper_encoder_from_ctranslate2(self.folder, tokens)

    def encoding_settings(self) -> dict[str, Any]:
        """Run by torch (formerly by CTranslate2, whose fp32 features differ from torch's in the third digit)."""
        return {"runtime": "torch"}

    def weights_identity(self) -> dict[str, Any]:
        if is_bundled(self.config.pretrained):
            return bundled_identity(self.config.pretrained)
        return {"folder_sha256": folder_digest(self.folder)}

    def encode(self, inputs: dict[str, Tensor]) -> EncoderOutput:
        tokens = self.module(inputs["input_features"]).last_hidden_state
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return EncoderOutput(tokens, positions[None, :] < inputs["lengths"].to(tokens.device)[:, None])

    def save_pretrained(self, folder: str) -> None:
        raise NotImplementedError("pretrained encoders are referenced by `pretrained`, never copied into a model folder")
