"""OneEncoder: frozen encoders -> per-modality head -> modality-token fusion -> Universal Projection
-> masked mean -> L2-normalised embedding."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .config import EncoderConfig, HeadConfig, OneEncoderConfig
from .encoders import EncoderOutput, FrozenEncoder, build_encoder
from .files import atomic_write_text, atomic_write_with
from .fusion import TokenFusion
from .heads import ModalityToken, ProjectionHead
from .projection import UniversalProjection, masked_mean, normalize
from .readers import build_reader

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "oneencoder"
FORMAT_VERSION = 1
ENCODER_FOLDER = "encoders"  # where save_pretrained writes encoders that have no pretrained source

ModalityInputs = dict[str, Tensor]
"""Per modality, either processor outputs for the encoder, or precomputed `features` + `mask`."""


class OneEncoder(nn.Module):
    """The whole embedding model; only the parts after the encoders ever train.

    `encoders` is a plain dict of FrozenEncoder handles, not submodules: their weights load on first
    use (never, when every input comes from a feature cache), follow the model's device when run, and
    stay out of the state dict, so checkpoints and exports hold only what trains.
    """

    def __init__(self, config: OneEncoderConfig) -> None:
        super().__init__()
        self.config = config
        d = config.embed_dim
        self.encoders: dict[str, FrozenEncoder] = {}
        self.heads = nn.ModuleDict()
        self.tokens = nn.ModuleDict()
        for modality in config.encoders:
            self._build_modality(modality)
        self.fusion = TokenFusion(config.fusion, d, config.up_heads)
        self.up = UniversalProjection(d, config.up_layers, config.up_heads, config.up_ff_dim, config.up_dropout)

    def _build_modality(self, modality: str) -> None:
        config = self.config
        encoder = build_encoder(config.encoders[modality])
        head = config.head(modality)
        self.encoders[modality] = encoder
        self.heads[modality] = ProjectionHead(encoder.dim, config.embed_dim, head.dropout, head.hidden_dim, head.max_positions)
        self.tokens[modality] = ModalityToken(
            config.num_modality_tokens, config.token_dim, config.token_hidden_dims, config.embed_dim
        )

    def add_modality(self, modality: str, encoder: EncoderConfig, head: HeadConfig | None = None) -> None:
        """Give the model a new modality: its encoder, a fresh head (the Alignment Layer) and modality
        token. Nothing existing changes, so the other modalities' embeddings stay what they were."""
        self.config = self.config.with_modality(modality, encoder, head)
        self._build_modality(modality)
        device = next(self.up.parameters()).device
        self.heads[modality].to(device)
        self.tokens[modality].to(device)

    @property
    def modalities(self) -> list[str]:
        return list(self.encoders)

    def encode(self, modality: str, inputs: ModalityInputs) -> EncoderOutput:
        """Frozen token features, or the precomputed ones when the inputs carry them."""
        if "features" in inputs:
            return EncoderOutput(inputs["features"], inputs["mask"].bool())
        return self._encoder(modality)(inputs)

    def project(self, modality: str, features: Tensor, mask: Tensor) -> Tensor:
        """Token features (batch, length, D_m) + mask (batch, length) -> embeddings (batch, d), unit norm."""
        head = self.heads[modality]
        # fp16 cached features, or fp32 encoder outputs under a bf16-true model, meet the head's dtype.
        tokens = head(features.to(next(head.parameters()).dtype))
        modality_tokens = self.tokens[modality]()
        fused, fused_mask = self.fusion(tokens, mask, modality_tokens)
        projected = self.up(fused, fused_mask)
        projected, fused_mask = self.fusion.strip(projected, fused_mask, self.config.num_modality_tokens)
        return normalize(masked_mean(projected, fused_mask))

    def forward(self, inputs: dict[str, ModalityInputs]) -> dict[str, Tensor]:
        """{modality: inputs} -> {modality: (batch, d) embeddings}."""
        embeddings = {}
        for modality, modality_inputs in inputs.items():
            encoded = self.encode(modality, modality_inputs)
            embeddings[modality] = self.project(modality, encoded.features, encoded.mask)
        return embeddings

    @torch.no_grad()
    def embed(self, modality: str, items: Sequence[Any], batch_size: int = 64, video_backend: str = "decord") -> Tensor:
        """Items -> (len(items), d) embeddings on the CPU.

        Text items are strings; media items are file paths (read as in evaluation: resampled sound,
        frames spread over the video) or already decoded PIL images, waveforms at the encoder's
        rate, or clips of frames.
        """
        was_training = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            encoder = self._encoder(modality)
            if modality != "text" and any(isinstance(item, (str, os.PathLike)) for item in items):
                read = build_reader(modality, encoder.preprocessor, video_backend)
                items = [read(Path(item), None) if isinstance(item, (str, os.PathLike)) else item for item in items]
            chunks = []
            for start in range(0, len(items), batch_size):
                inputs = encoder.preprocess(items[start : start + batch_size])
                inputs = {k: v.to(device) for k, v in inputs.items()}
                chunks.append(self({modality: inputs})[modality].cpu())
            return torch.cat(chunks) if chunks else torch.empty(0, self.config.embed_dim)
        finally:
            self.train(was_training)

    def _encoder(self, modality: str) -> FrozenEncoder:
        """The modality's encoder, loaded and on this model's device."""
        if modality not in self.encoders:
            raise KeyError(f"no encoder for modality {modality!r}; this model has {self.modalities}")
        return self.encoders[modality].to(next(self.parameters()).device)

    # --- saving and loading -------------------------------------------------------------------------

    def save_pretrained(self, folder: str | os.PathLike[str]) -> None:
        """Write config.json + model.safetensors; encoders built from a config (no pretrained source)
        are written under encoders/<modality>/ so the folder alone rebuilds identical embeddings."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        encoder_configs = {}
        for modality, encoder_config in self.config.encoders.items():
            encoder_configs[modality] = self._saved_encoder_config(modality, encoder_config, folder)
        config = dataclasses.replace(self.config, encoders=encoder_configs)
        payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": config.to_dict()}
        weights = {k: v.contiguous() for k, v in self.state_dict().items()}
        atomic_write_with(folder / WEIGHTS_NAME, lambda tmp: save_file(weights, tmp))
        atomic_write_text(folder / CONFIG_NAME, json.dumps(payload, indent=2))

    def _saved_encoder_config(self, modality: str, config: EncoderConfig, folder: Path) -> EncoderConfig:
        if config.pretrained is not None:
            local = Path(config.pretrained)
            source = str(local.resolve()) if local.exists() and not local.is_absolute() else config.pretrained
            return dataclasses.replace(config, pretrained=source)
        relative = f"{ENCODER_FOLDER}/{modality}"
        encoder = self.encoders[modality]
        marker = folder / relative / "fingerprint.txt"
        # Frozen weights never change within a run: write them once, not at every improved epoch.
        if not (marker.is_file() and marker.read_text() == encoder.fingerprint):
            encoder.save_pretrained(str(folder / relative))
            marker.write_text(encoder.fingerprint)
        return dataclasses.replace(config, pretrained=relative, model_config=None, vocab=None)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike[str]) -> OneEncoder:
        """Rebuild a model saved by `save_pretrained` (a stage's output folder); no pickles are read."""
        folder = Path(folder)
        config = read_config(folder)
        for encoder_config in config.encoders.values():
            if encoder_config.pretrained and (folder / encoder_config.pretrained).is_dir():
                encoder_config.pretrained = str(folder / encoder_config.pretrained)
        model = cls(config)
        weights_path = folder / WEIGHTS_NAME
        if not weights_path.is_file():
            raise FileNotFoundError(f"{weights_path} is missing: the folder has a config but no weights")
        missing, unexpected = model.load_state_dict(load_file(str(weights_path)), strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{weights_path} does not match its config.json: missing {missing[:5]}, unexpected"
                f" {unexpected[:5]}. Was the folder written by another version or another stage?"
            )
        return model.eval()


def read_config(folder: Path) -> OneEncoderConfig:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: expected a OneEncoder folder (config.json + model.safetensors) as written"
            " by a stage's output or OneEncoder.save_pretrained"
        )
    payload = json.loads(path.read_text())
    if payload.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a OneEncoder config (format {payload.get('format')!r}, expected {FORMAT!r});"
            " point to the output folder of a oneencoder stage"
        )
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {payload['format_version']}; this oneencoder reads up to"
            f" {FORMAT_VERSION}: upgrade oneencoder"
        )
    return OneEncoderConfig.from_dict(payload["model"])
