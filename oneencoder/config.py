"""Typed configs saved beside the weights, so that a folder alone rebuilds a model."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

FUSIONS = ("add", "multiply", "concat", "cross_attention", "resample")
PROJECTIONS = ("up", "moe")
ROUTERS = ("soft", "constant")
Config = TypeVar("Config")


def from_fields(cls: type[Config], data: Any, where: str) -> Config:
    """`cls(**data)`, with a message naming the keys that are unknown or missing (a config.json
    edited by hand or written by another version) instead of a bare TypeError."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping of {cls.__name__} fields (got {type(data).__name__})")
    fields = dataclasses.fields(cls)
    known = {f.name for f in fields}
    required = {f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    unknown, missing = sorted(set(data) - known), sorted(required - set(data))
    problems = ([f"unknown keys {unknown}"] if unknown else []) + ([f"missing required keys {missing}"] if missing else [])
    if problems:
        raise ValueError(f"{where}: {cls.__name__} has {' and '.join(problems)}; valid keys: {sorted(known)}")
    return cls(**data)


@dataclass
class EncoderConfig:
    """How to build one frozen encoder and its preprocessing.

    Exactly one of ``pretrained`` (a hub name or a local folder) and ``model_config`` (keyword
    arguments of ``transformers.AutoConfig.for_model``, for tiny random encoders in tests) is set.
    ``processor`` overrides preprocessing settings (``max_length``, ``size``, ``sampling_rate``...),
    plus how files are read for the encoder: ``max_seconds`` of audio (default 10) and, for video, the
    ``frame_stride`` of training windows (default 4; the frame count is the model's ``num_frames``). ``vocab`` gives a word-level vocabulary to a text encoder built from
    ``model_config``, which has no tokenizer of its own.
    """

    kind: str
    pretrained: str | None = None
    model_config: dict[str, Any] | None = None
    processor: dict[str, Any] = field(default_factory=dict)
    vocab: list[str] | None = None
    backend: str = "transformers"

    def __post_init__(self) -> None:
        if (self.pretrained is None) == (self.model_config is None):
            raise ValueError(
                f"EncoderConfig(kind={self.kind!r}) needs exactly one of `pretrained` (a model name or"
                f" folder) and `model_config` (a config dict for a randomly initialised model); got"
                f" pretrained={self.pretrained!r}, model_config={'set' if self.model_config else None}"
            )


@dataclass
class HeadConfig:
    """A modality's adapter from encoder width to d: the projection head of the first stage, or the
    Alignment Layer (AL) of a modality added later (OneEncoder uses the same shape for both).

    Linear(D_m -> hidden_dim), GELU, Linear(hidden_dim -> d), Dropout, LayerNorm, per token;
    ``hidden_dim`` None means d. ``max_positions`` adds a learned position embedding over that many
    tokens (a video's frames encoded one by one: the temporal embedding). ``pool`` averages each run
    of that many consecutive real tokens into one before the head: an encoder with fine time steps
    (Whisper's 20 ms) then costs the projection a fraction of its length.
    """

    hidden_dim: int | None = None
    dropout: float = 0.1
    max_positions: int | None = None
    pool: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.pool, int) or self.pool < 1:
            raise ValueError(f"head `pool` must be an integer >= 1, the number of tokens averaged into one (got {self.pool!r})")


@dataclass
class ProjectionConfig:
    """The shared projection: OneEncoder's single Universal Projection (``up``), or OneLLM's mixture
    of ``experts`` projections weighted per token by a router per modality (``moe``).

    Each expert has the UP's shape (``up_layers``, ``up_heads``, ``up_ff_dim``, ``up_dropout`` of the
    model config). A ``soft`` router is an MLP d -> ``router_hidden_dim`` (None: 4 * d) -> experts;
    a ``constant`` router gives every expert 1/experts (OneLLM's ablation), with no parameters.
    """

    kind: str = "up"
    experts: int = 3
    router_hidden_dim: int | None = None
    router: str = "soft"

    def __post_init__(self) -> None:
        if self.kind not in PROJECTIONS:
            raise ValueError(f"projection.kind must be one of {PROJECTIONS} (got {self.kind!r})")
        if self.router not in ROUTERS:
            raise ValueError(f"projection.router must be one of {ROUTERS} (got {self.router!r})")
        if not isinstance(self.experts, int) or self.experts < 1:
            raise ValueError(f"projection.experts must be an integer >= 1 (got {self.experts!r})")
        if self.router_hidden_dim is not None and self.router_hidden_dim < 1:
            raise ValueError(
                f"projection.router_hidden_dim must be >= 1, or null for 4 * embed_dim (got {self.router_hidden_dim!r})"
            )


@dataclass
class OneEncoderConfig:
    """OneEncoder's model: per-modality heads and tokens around one shared Universal Projection.

    Defaults are the paper's: d = 256, one UP layer with 4 heads and PyTorch's transformer defaults,
    one 3-d modality token through an MLP 3 -> 64 -> 128 -> d, fusion by addition. ``heads`` sets a
    modality's head or Alignment Layer; modalities not in it get ``HeadConfig()``. ``projection``
    chooses between that UP and OneLLM's mixture of experts (a folder without it holds a UP).
    """

    encoders: dict[str, EncoderConfig]
    embed_dim: int = 256
    heads: dict[str, HeadConfig] = field(default_factory=dict)
    fusion: str = "add"
    num_modality_tokens: int = 1
    token_dim: int = 3
    token_hidden_dims: tuple[int, ...] = (64, 128)
    up_layers: int = 1
    up_heads: int = 4
    up_ff_dim: int = 2048
    up_dropout: float = 0.1
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)

    def __post_init__(self) -> None:
        self.encoders = {
            name: from_fields(EncoderConfig, cfg, f"encoders.{name}") for name, cfg in self.encoders.items()
        }
        self.heads = {name: from_fields(HeadConfig, cfg, f"heads.{name}") for name, cfg in self.heads.items()}
        strays = sorted(set(self.heads) - set(self.encoders))
        if strays:
            raise ValueError(f"`heads` names modalities without an encoder: {strays}; encoders: {sorted(self.encoders)}")
        self.token_hidden_dims = tuple(self.token_hidden_dims)
        self.projection = from_fields(ProjectionConfig, self.projection, "projection")
        if self.num_modality_tokens < 1:
            raise ValueError(f"num_modality_tokens must be >= 1 (got {self.num_modality_tokens})")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS} (got {self.fusion!r})")
        if self.embed_dim % self.up_heads:
            raise ValueError(
                f"embed_dim must be divisible by up_heads (got {self.embed_dim} and {self.up_heads})"
            )
        if not self.encoders:
            raise ValueError("OneEncoderConfig needs at least one encoder")

    def head(self, modality: str) -> HeadConfig:
        return self.heads.get(modality, HeadConfig())

    def with_modality(self, modality: str, encoder: EncoderConfig, head: HeadConfig | None = None) -> OneEncoderConfig:
        """A copy that also has `modality` (a later stage's addition)."""
        if modality in self.encoders:
            raise ValueError(
                f"modality {modality!r} is already in the model ({sorted(self.encoders)}); an align stage"
                " adds a new one: pick another name, or start from a folder made before it was added"
            )
        heads = {**self.heads, modality: head} if head is not None else dict(self.heads)
        return dataclasses.replace(self, encoders={**self.encoders, modality: encoder}, heads=heads)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OneEncoderConfig:
        return from_fields(cls, data, "the model config")
