"""A trained codebook model: frozen features of an earlier OneEncoder model -> per-modality generic
encoders -> one vector per item -> the codebook shared by every modality (arXiv 2403.05168).

Inputs are either the frozen encoders' token features (`inputs: encoder`, the paper's unaligned
per-modality features) or the earlier model's aligned token sequence before pooling (`inputs:
aligned`). Time-series modalities are resampled to `steps` time steps (the fine level works per
step); every other modality is one step, the mean of its tokens. The exported folder holds only what
produces codes: this module's weights and config, the codebook, the TOC choice, and the earlier model
under `base/`; the training-only networks (decoders, CPC, CLUB) stay in the stage's checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .codebook import CodebookConfig, SharedCodebook, toc_dimensions
from .config import from_fields
from .files import atomic_write_text, atomic_write_with
from .formats import read_format_header
from .model import CONFIG_NAME, WEIGHTS_NAME, ModelFolderError, OneEncoder

FORMAT = "oneencoder-codebook"
FORMAT_VERSION = 1
BASE_FOLDER = "base"  # the earlier OneEncoder model, whose encoders (and projection) make the inputs
# TOC's choice, beside the weights rather than in config.json: choosing it after training leaves the
# exported model's files (and the pipeline's digest of them) as the stage wrote them.
TOC_NAME = "toc.json"
INPUTS = ("encoder", "aligned")


@dataclass
class CodebookModelConfig:
    """`modalities` share the codebook; `fine_modalities` (a subset) keep `steps` time steps before
    pooling. `toc` lists the codebook dimensions TOC kept (None: all of them)."""

    modalities: list[str] = field(default_factory=lambda: ["audio", "video", "text"])
    fine_modalities: list[str] = field(default_factory=lambda: ["audio", "video"])
    inputs: str = "encoder"
    steps: int = 8
    hidden_dim: int = 512
    codebook: CodebookConfig = field(default_factory=CodebookConfig)
    toc: list[int] | None = None

    def __post_init__(self) -> None:
        if self.inputs not in INPUTS:
            raise ValueError(f"inputs must be one of {INPUTS} (got {self.inputs!r})")
        stray = sorted(set(self.fine_modalities) - set(self.modalities))
        if stray:
            raise ValueError(f"fine_modalities {stray} are not among modalities {self.modalities}")
        if len(self.modalities) < 2:
            raise ValueError(f"a shared codebook needs at least two modalities (got {self.modalities})")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1 (got {self.steps})")

    def steps_of(self, modality: str) -> int:
        return self.steps if modality in self.fine_modalities else 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CodebookModelConfig:
        data = dict(data)
        data["codebook"] = from_fields(CodebookConfig, data.get("codebook") or {}, "the codebook config")
        return from_fields(cls, data, "the codebook model config")


@dataclass
class Codes:
    """One modality's items: code indices (N,), quantised vectors (N, D; TOC's dimensions when TOC
    chose some) and the continuous vectors before quantisation (N, dim)."""

    indices: Tensor
    quantized: Tensor
    continuous: Tensor


def resample_steps(tokens: Tensor, mask: Tensor, steps: int) -> Tensor:
    """(batch, length, D) real tokens -> (batch, steps, D): step t averages the t-th of `steps` equal
    runs of each item's real tokens (an item shorter than `steps` repeats tokens), so items of any
    length and padding give the same time grid."""
    real = mask.bool()
    lengths = real.sum(1, keepdim=True).clamp_min(1).to(tokens.dtype)  # (B, 1)
    position = (real.cumsum(1) - 1).to(tokens.dtype)  # index among the real tokens, (B, L)
    t = torch.arange(steps, device=tokens.device, dtype=tokens.dtype)[None, :, None]  # (1, T, 1)
    start = torch.floor(t * lengths[:, :, None] / steps)
    end = torch.maximum(torch.ceil((t + 1) * lengths[:, :, None] / steps), start + 1)
    pos = position[:, None, :]
    weights = ((pos >= start) & (pos < end) & real[:, None, :]).to(tokens.dtype)  # (B, T, L)
    return weights @ tokens / weights.sum(-1, keepdim=True).clamp_min(1.0)


def mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear -> GELU -> Linear: every per-modality network of the codebook stage."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))


class CodebookModel(nn.Module):
    """`base` (frozen, always in eval mode) makes each modality's token features; `generic[m]` maps
    each time step to the codebook's width; `coarse[m]` maps the mean over steps to the vector that is
    quantised in the shared codebook."""

    def __init__(self, base: OneEncoder, config: CodebookModelConfig) -> None:
        super().__init__()
        missing = sorted(set(config.modalities) - set(base.modalities))
        if missing:
            raise ValueError(f"the base model has no encoder for {missing}; it has {base.modalities}")
        self.config = config
        self.base = base.requires_grad_(False).eval()
        dim = config.codebook.dim
        self.generic = nn.ModuleDict({m: mlp(self.input_dim(m), config.hidden_dim, dim) for m in config.modalities})
        self.coarse = nn.ModuleDict({m: nn.Linear(dim, dim) for m in config.modalities})
        self.codebook = SharedCodebook(config.codebook)

    def input_dim(self, modality: str) -> int:
        if self.config.inputs == "aligned":
            return self.base.config.embed_dim
        return self.base.encoders[modality].dim

    def train(self, mode: bool = True) -> CodebookModel:
        super().train(mode)
        self.base.eval()  # frozen: computes exactly as it did when it was trained
        return self

    def step_inputs(self, modality: str, features: Tensor, mask: Tensor) -> Tensor:
        """Token features (batch, length, D_m) + mask -> (batch, steps, D): what the generic encoder
        reads (and the stage's decoders reconstruct)."""
        with torch.no_grad():
            if self.config.inputs == "aligned":
                features, mask = self.base.project_tokens(modality, features, mask)
            return resample_steps(features.float(), mask, self.config.steps_of(modality))

    def generic_steps(self, modality: str, steps: Tensor) -> Tensor:
        return self.generic[modality](steps)

    def coarse_vector(self, modality: str, generic: Tensor) -> Tensor:
        """(batch, steps, dim) -> (batch, dim): pooled over time, the vector the codebook quantises."""
        return self.coarse[modality](generic.mean(1))

    @torch.no_grad()
    def codes_from_features(self, modality: str, features: Tensor, mask: Tensor) -> Codes:
        continuous = self.coarse_vector(modality, self.generic_steps(modality, self.step_inputs(modality, features, mask)))
        indices, quantized = self.codebook.nearest(continuous)
        if self.config.toc is not None:
            quantized = quantized[:, self.config.toc]
        return Codes(indices, quantized, continuous)

    @torch.no_grad()
    def quantize(self, modality: str, items: Sequence[Any], batch_size: int = 64,
                 video_backend: str = "decord") -> tuple[Tensor, Tensor]:
        """Items (captions, media paths or decoded media, as `OneEncoder.embed` takes them) -> code
        indices (N,) and quantised vectors (N, D) on the CPU."""
        if modality not in self.config.modalities:
            raise KeyError(f"no codes for modality {modality!r}; this codebook serves {self.config.modalities}")
        was_training = self.training
        self.eval()
        try:
            codes = [self.codes_from_features(modality, out.features, out.mask)
                     for out in self.base.encode_items(modality, items, batch_size, video_backend)]
        finally:
            self.train(was_training)
        if not codes:
            width = len(self.config.toc) if self.config.toc is not None else self.config.codebook.dim
            return torch.empty(0, dtype=torch.long), torch.empty(0, width)
        return torch.cat([c.indices for c in codes]).cpu(), torch.cat([c.quantized for c in codes]).cpu()

    def choose_toc(self, k: int | None) -> list[int] | None:
        """Keep TOC's top-k codebook dimensions in the quantised vectors (None: keep them all)."""
        self.config.toc = None if k is None else toc_dimensions(self.codebook.embedding, k)
        return self.config.toc

    # --- saving and loading -------------------------------------------------------------------------

    def save_pretrained(self, folder: str | os.PathLike[str]) -> None:
        """config.json + model.safetensors (everything but the base) + base/ (the earlier model) +
        toc.json (TOC's choice, when there is one; a stale one is removed)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.base.save_pretrained(folder / BASE_FOLDER)
        weights = {k: v.contiguous() for k, v in self.state_dict().items() if not k.startswith(f"{BASE_FOLDER}.")}
        config = {k: v for k, v in self.config.to_dict().items() if k != "toc"}
        payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": config}
        atomic_write_with(folder / WEIGHTS_NAME, lambda tmp: save_file(weights, tmp))
        atomic_write_text(folder / CONFIG_NAME, json.dumps(payload, indent=2))
        self.save_toc(folder)

    def save_toc(self, folder: str | os.PathLike[str]) -> None:
        """Write (or, without a choice, remove) the folder's toc.json only."""
        path = Path(folder) / TOC_NAME
        if self.config.toc is None:
            path.unlink(missing_ok=True)
        else:
            atomic_write_text(path, json.dumps({"k": len(self.config.toc), "dimensions": self.config.toc}))

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike[str]) -> CodebookModel:
        folder = Path(folder)
        if not folder.is_dir():
            raise ModelFolderError(f"{folder} is not a folder: name the output folder of a codebook stage")
        config_path = folder / CONFIG_NAME
        if not config_path.is_file():
            raise ModelFolderError(f"{config_path} is missing: name the output folder of a codebook stage, or export"
                                   " the codebook stage again")
        payload = read_format_header(config_path, FORMAT, FORMAT_VERSION, ModelFolderError,
                                     "a codebook model folder's config", "name the output folder of a codebook stage")
        model = cls(OneEncoder.from_pretrained(folder / BASE_FOLDER), CodebookModelConfig.from_dict(payload["model"]))
        weights_path = folder / WEIGHTS_NAME
        try:
            weights = load_file(weights_path)
        except (OSError, SafetensorError) as error:
            raise ModelFolderError(f"{weights_path} cannot be read ({error}); export the codebook stage again") from None
        expected = {k for k in model.state_dict() if not k.startswith(f"{BASE_FOLDER}.")}
        if set(weights) != expected:
            raise ModelFolderError(
                f"{weights_path} does not match its config.json (missing {sorted(expected - set(weights))[:5]},"
                f" unexpected {sorted(set(weights) - expected)[:5]}); export the codebook stage again"
            )
        model.load_state_dict(weights, strict=False)
        model.config.toc = _read_toc(folder / TOC_NAME, model.config.codebook.dim)
        return model.eval()


def _read_toc(path: Path, dim: int) -> list[int] | None:
    if not path.exists():
        return None
    try:
        dimensions = json.loads(path.read_text())["dimensions"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ModelFolderError(f"{path} cannot be read ({error!r}); choose again with `oneencoder toc`") from None
    if not dimensions or not all(isinstance(d, int) and 0 <= d < dim for d in dimensions):
        raise ModelFolderError(f"{path} lists dimensions outside the codebook's {dim}; choose again with `oneencoder toc`")
    return dimensions
