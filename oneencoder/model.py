"""OneEncoder: frozen encoders -> per-modality head -> modality-token fusion -> Universal Projection
-> masked mean -> L2-normalised embedding.

A saved folder is self-contained and relocatable: config.json, model.safetensors, and under
encoders/<modality> every encoder that has no name to fetch it by (a hub or `bundled:` name): one
built from a config, or one read from a local folder or file, which is copied in once. Paths in
config.json are relative to the folder, so it can be moved or copied to another machine whole.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .config import EncoderConfig, HeadConfig, OneEncoderConfig, ProjectionConfig
from .encoders import EncoderOutput, FrozenEncoder, build_encoder
from .files import FILE_MODE, atomic_write_text, atomic_write_with
from .formats import read_format_header
from .fusion import TokenFusion
from .heads import ModalityToken, ProjectionHead
from .projection import MixtureProjection, UniversalProjection, masked_mean, normalize
from .readers import build_reader

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "oneencoder"
FORMAT_VERSION = 2  # 2: `projection` (a UP or a mixture of experts); a version-1 folder holds a UP
ENCODER_FOLDER = "encoders"  # where save_pretrained writes encoders that have no name to fetch them by
REEXPORT_HINT = "copy the whole folder again, or export the model again from its stage"

ModalityInputs = dict[str, Tensor]
"""Per modality, either processor outputs for the encoder, or precomputed `features` + `mask`."""


class ModelFolderError(ValueError):
    """A saved model folder is incomplete or one of its files is damaged."""


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
        self.up = _build_projection(config)

    def _build_modality(self, modality: str) -> None:
        config = self.config
        encoder = build_encoder(config.encoders[modality])
        head = config.head(modality)
        self.encoders[modality] = encoder
        self.heads[modality] = ProjectionHead(
            encoder.dim, config.embed_dim, head.dropout, head.hidden_dim, head.max_positions, head.pool
        )
        self.tokens[modality] = ModalityToken(
            config.num_modality_tokens, config.token_dim, config.token_hidden_dims, config.embed_dim
        )

    def add_modality(
        self, modality: str, encoder: EncoderConfig, head: HeadConfig | None = None, tokens_from: str | None = None
    ) -> None:
        """Give the model a new modality: its encoder, a fresh head (the Alignment Layer), modality
        tokens (a copy of `tokens_from`'s, when given: OneLLM starts new tokens from trained ones)
        and, in a mixture, a router. Nothing existing changes, so the other modalities' embeddings
        stay what they were."""
        if tokens_from is not None and tokens_from not in self.tokens:
            raise ValueError(
                f"tokens_from={tokens_from!r} is not a modality of this model ({self.modalities}); name one"
                " whose modality tokens the new modality should start from, or leave it unset"
            )
        self.config = self.config.with_modality(modality, encoder, head)
        self._build_modality(modality)
        device = next(self.up.parameters()).device
        self.heads[modality].to(device)
        self.tokens[modality].to(device)
        if tokens_from is not None:
            self.tokens[modality].load_state_dict(self.tokens[tokens_from].state_dict())
        if isinstance(self.up, MixtureProjection):
            self.up.add_router(modality)

    def to_mixture(self, projection: ProjectionConfig, experts_from_up: bool = True) -> OneEncoder:
        """A new model with this one's encoders, heads, tokens and fusion around a mixture of experts
        (OneLLM's stage 1 -> later stages). With `experts_from_up` every expert starts as a copy of
        this model's UP, so the embeddings are unchanged (up to rounding) until training moves them;
        otherwise the experts start fresh. Routers always start fresh."""
        if isinstance(self.up, MixtureProjection):
            raise ValueError("this model's projection is already a mixture of experts; to_mixture turns a UP into one")
        if projection.kind != "moe":
            raise ValueError(f"to_mixture needs a projection config with kind 'moe' (got {projection.kind!r})")
        mixture = OneEncoder(dataclasses.replace(self.config, projection=projection))
        mixture.encoders = dict(self.encoders)  # the same frozen handles: loaded once, identical features
        for name in ("heads", "tokens", "fusion"):
            getattr(mixture, name).load_state_dict(getattr(self, name).state_dict())
        if experts_from_up:
            for expert in mixture.up.experts:
                expert.load_state_dict(self.up.state_dict())
        reference = next(self.parameters())
        return mixture.to(device=reference.device, dtype=reference.dtype).train(self.training)

    def modality_parts(self, modality: str) -> list[str]:
        """Parameter-name prefixes that belong to `modality` alone (what an align stage trains):
        its head, its tokens and, in a mixture, its router when that has parameters."""
        if modality not in self.encoders:
            raise ValueError(f"no modality {modality!r}; this model has {self.modalities}")
        parts = [f"heads.{modality}", f"tokens.{modality}"]
        if isinstance(self.up, MixtureProjection) and list(self.up.routers[modality].parameters()):
            parts.append(f"up.routers.{modality}")
        return parts

    @property
    def modalities(self) -> list[str]:
        return list(self.encoders)

    def fingerprint(self) -> str:
        """Identity of what the model computes: its encoders' fingerprints and every trained weight.
        Embeddings and indexes record it, so that vectors from two models are never compared (their
        spaces differ even where shapes agree). A model built from configs in memory and the same model
        saved and loaded differ: an encoder built from a config is identified by that config, its saved
        copy by its files. `embed`, `search` and `serve` all load models from folders."""
        digest = hashlib.sha256()
        for modality in sorted(self.encoders):
            digest.update(f"{modality}={self.encoders[modality].fingerprint};".encode())
        for name, tensor in sorted(self.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        return f"oneencoder-{digest.hexdigest()[:16]}"

    def encode(self, modality: str, inputs: ModalityInputs) -> EncoderOutput:
        """Frozen token features, or the precomputed ones when the inputs carry them."""
        if "features" in inputs:
            return EncoderOutput(inputs["features"], inputs["mask"].bool())
        return self._encoder(modality)(inputs)

    def project(self, modality: str, features: Tensor, mask: Tensor) -> Tensor:
        """Token features (batch, length, D_m) + mask (batch, length) -> embeddings (batch, d), unit norm."""
        return normalize(masked_mean(*self.project_tokens(modality, features, mask)))

    def project_tokens(self, modality: str, features: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """The aligned token sequence before pooling: (batch, length', d) and its mask, without the
        modality tokens (a codebook stage can read the aligned sequence step by step)."""
        fused, fused_mask = self._fuse(modality, features, mask)
        projected = self.up(fused, fused_mask, modality)
        return self.fusion.strip(projected, fused_mask, self.config.num_modality_tokens)

    def routing(self, modality: str, features: Tensor, mask: Tensor) -> Tensor | None:
        """(batch, K): each item's router weights averaged over the real tokens the experts see
        (the router analysis); None for a UP, which has no experts to weigh."""
        if not isinstance(self.up, MixtureProjection):
            return None
        fused, fused_mask = self._fuse(modality, features, mask)
        return masked_mean(self.up.weights(fused, modality), fused_mask)

    def _fuse(self, modality: str, features: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Head, then modality-token fusion: the tokens (and their mask) that enter the projection."""
        head = self.heads[modality]
        # fp16 cached features, or fp32 encoder outputs under a bf16-true model, meet the head's dtype.
        tokens, mask = head(features.to(next(head.parameters()).dtype), mask)
        return self.fusion(tokens, mask, self.tokens[modality]())

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
            chunks = [self.project(modality, encoded.features, encoded.mask).cpu()
                      for encoded in self.encode_items(modality, items, batch_size, video_backend)]
            return torch.cat(chunks) if chunks else torch.empty(0, self.config.embed_dim)
        finally:
            self.train(was_training)

    def encode_items(self, modality: str, items: Sequence[Any], batch_size: int = 64,
                     video_backend: str = "decord") -> Iterator[EncoderOutput]:
        """Items (as `embed` takes them) -> the frozen encoder's outputs, batch by batch, on this
        model's device: what `embed` projects and a codebook model quantises."""
        device = next(self.parameters()).device
        encoder = self._encoder(modality)
        if modality != "text" and any(isinstance(item, (str, os.PathLike)) for item in items):
            read = build_reader(modality, encoder.preprocessor, video_backend)
            items = [read(Path(item), None) if isinstance(item, (str, os.PathLike)) else item for item in items]
        for start in range(0, len(items), batch_size):
            inputs = encoder.preprocess(items[start : start + batch_size])
            yield self.encode(modality, {k: v.to(device) for k, v in inputs.items()})

    def _encoder(self, modality: str) -> FrozenEncoder:
        """The modality's encoder, loaded and on this model's device."""
        if modality not in self.encoders:
            raise KeyError(f"no encoder for modality {modality!r}; this model has {self.modalities}")
        return self.encoders[modality].to(next(self.parameters()).device)

    # --- saving and loading -------------------------------------------------------------------------

    def save_pretrained(self, folder: str | os.PathLike[str]) -> None:
        """Write config.json + model.safetensors, and encoders/<modality> for each encoder without a
        hub or `bundled:` name, so the folder alone, wherever it is moved, rebuilds identical embeddings."""
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
        """The encoder's config as the folder records it: a name as it is, a local source as its
        copy under encoders/<modality> (a path relative to the folder)."""
        source = None if config.pretrained is None else Path(config.pretrained)
        if source is not None and not source.exists():
            return config  # a hub or `bundled:` name: wherever the folder goes, the name fetches it
        relative = f"{ENCODER_FOLDER}/{modality}"
        if source is not None and source.is_file():
            relative = f"{relative}/{source.name}"  # a weights file keeps its name (it may say the architecture)
        encoder = self.encoders[modality]
        target = folder / ENCODER_FOLDER / modality
        marker = folder / ENCODER_FOLDER / f"{modality}.fingerprint"
        inside = source is not None and source.resolve().is_relative_to(target.resolve())
        # Frozen weights never change within a run: write them once, not at every improved epoch.
        written = inside or (target.exists() and marker.is_file() and marker.read_text() == encoder.fingerprint)
        if not written:
            marker.unlink(missing_ok=True)
            if source is None:
                _replace_folder(target, lambda tmp: encoder.save_pretrained(str(tmp)))
            else:
                _replace_folder(target, lambda tmp: _copy_files(source, tmp))
            atomic_write_text(marker, encoder.fingerprint)
        return dataclasses.replace(config, pretrained=relative, model_config=None, vocab=None)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike[str]) -> OneEncoder:
        """Rebuild a model saved by `save_pretrained` (a stage's output folder); no pickles are read."""
        folder = Path(folder)
        config = read_config(folder)
        for modality, encoder_config in config.encoders.items():
            encoder_config.pretrained = _local_source(folder, modality, encoder_config.pretrained)
        weights_path = folder / WEIGHTS_NAME
        if not weights_path.is_file():
            raise FileNotFoundError(f"{weights_path} is missing: the folder has a config but no weights")
        model = cls(config)
        _load_weights(model, weights_path)
        return model.eval()


def _build_projection(config: OneEncoderConfig) -> UniversalProjection | MixtureProjection:
    shape = (config.embed_dim, config.up_layers, config.up_heads, config.up_ff_dim, config.up_dropout)
    if config.projection.kind == "moe":
        return MixtureProjection(*shape, config.projection, list(config.encoders))
    return UniversalProjection(*shape)


def _replace_folder(target: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` fills a fresh folder beside `target`, which then takes its place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    tmp.mkdir()  # ordinary permissions (tempfile.mkdtemp's are 0700)
    try:
        write(tmp)
        for path in tmp.rglob("*"):
            if path.is_file():  # transformers writes weights 0600, from a temporary file
                path.chmod(FILE_MODE)
        if target.exists():
            old = target.with_name(f"{tmp.name}.old")
            target.rename(old)
            shutil.rmtree(old)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _copy_files(source: Path, folder: Path) -> None:
    """A local encoder (a folder, or one weights file) into `folder`."""
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    for path in files:
        copy = folder / (path.name if source.is_file() else path.relative_to(source))
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy)


def _local_source(folder: Path, modality: str, pretrained: str | None) -> str | None:
    """A `pretrained` that names a file of the folder, as a path that loads from anywhere; names to
    fetch stay as they are. A missing encoders/<modality> means the folder was copied incompletely:
    said here, rather than looked up on the Hugging Face Hub under that name."""
    if pretrained is None:
        return None
    local = folder / pretrained
    saved = pretrained == f"{ENCODER_FOLDER}/{modality}" or pretrained.startswith(f"{ENCODER_FOLDER}/{modality}/")
    if (saved or Path(pretrained).is_absolute()) and not local.exists():
        raise ModelFolderError(
            f"{folder} is incomplete: its {modality} encoder should be at {local}, which does not exist;"
            f" {REEXPORT_HINT}"
        )
    return str(local) if local.exists() else pretrained


def _load_weights(model: OneEncoder, path: Path) -> None:
    """model.safetensors into `model`; a damaged file or one made for another config is named."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise ModelFolderError(f"{path} is not a readable safetensors file ({error}); {REEXPORT_HINT}") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # tensors of the wrong shape
        details = str(error).split(":", 1)[-1].strip().splitlines()[0]
        raise ModelFolderError(f"{path} does not match its {CONFIG_NAME}: {details}; {REEXPORT_HINT}") from None
    if missing or unexpected:
        raise ModelFolderError(
            f"{path} does not match its {CONFIG_NAME}: missing {missing[:5]}, unexpected {unexpected[:5]}."
            " Was the folder written by another version or another stage?"
        )


def read_config(folder: Path) -> OneEncoderConfig:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: expected a OneEncoder folder (config.json + model.safetensors) as written"
            " by a stage's output or OneEncoder.save_pretrained"
        )
    payload = read_format_header(path, FORMAT, FORMAT_VERSION, ModelFolderError, "a OneEncoder config",
                                 "point to the output folder of a oneencoder stage, or " + REEXPORT_HINT)
    try:
        return OneEncoderConfig.from_dict(payload["model"])
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ModelFolderError(
            f"{path}: the model config is invalid ({type(error).__name__}: {error}); {REEXPORT_HINT}"
        ) from None
