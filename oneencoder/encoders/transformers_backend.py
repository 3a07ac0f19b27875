"""Frozen encoders from transformers: text (BERT-like), image (ViT-like), audio (wav2vec2-like) and
video (VideoMAE-like), each from a pretrained name or folder, or from a config dict for tests."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from ..config import EncoderConfig
from .base import EncoderOutput, FrozenEncoder, Preprocessor, folder_digest
from .bundled import bundled_identity, is_bundled, resolve

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class EncoderLoadError(OSError):
    """A pretrained encoder could not be found locally or downloaded."""


def _from_pretrained(loader: Any, source: str, what: str, **kwargs: Any) -> Any:
    try:
        return loader.from_pretrained(resolve(source), **kwargs)
    except (OSError, ValueError) as error:
        offline = os.environ.get("HF_HUB_OFFLINE", "0")
        raise EncoderLoadError(
            f"cannot load the {what} {source!r} ({type(error).__name__}: {str(error).splitlines()[0]})."
            f" HF_HUB_OFFLINE={offline}: with it set to 1 only local folders and models already in the"
            " Hugging Face cache load. Download the model once on a machine with network access, or set"
            " `pretrained` to a local folder that holds it."
        ) from None


class ProcessorWrapper(Preprocessor):
    """A transformers tokenizer / image processor / feature extractor plus the call settings."""

    def __init__(self, processor: Any, **call_settings: Any) -> None:
        self.processor = processor
        self.call_settings = call_settings

    def settings(self) -> dict[str, Any]:
        config = self.processor.get_vocab() if hasattr(self.processor, "get_vocab") else self.processor.to_dict()
        return {"processor": config, "call": self.call_settings}

    def save_pretrained(self, folder: str) -> None:
        self.processor.save_pretrained(folder)


class TextPreprocessor(ProcessorWrapper):
    def __call__(self, items: Sequence[str]) -> dict[str, Tensor]:
        encoded = self.processor(list(items), padding=True, truncation=True, return_tensors="pt", **self.call_settings)
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def save_pretrained(self, folder: str) -> None:
        # A fast tokenizer keeps the padding / truncation of its last call in tokenizer.json; clear
        # them (every call sets its own), so an export is the same file whether or not it was used.
        backend = getattr(self.processor, "backend_tokenizer", None)
        if backend is not None:
            backend.no_padding()
            backend.no_truncation()
        super().save_pretrained(folder)


class ImagePreprocessor(ProcessorWrapper):
    def __call__(self, items: Sequence[Any]) -> dict[str, Tensor]:
        return {"pixel_values": self.processor(list(items), return_tensors="pt")["pixel_values"]}


class AudioPreprocessor(ProcessorWrapper):
    """1-d float waveforms at the extractor's sampling rate -> padded values + sample mask.

    Waveforms longer than the `max_seconds` call setting are cut to it: the audio reader already
    keeps at most that much, this guards waveforms that come from elsewhere.
    """

    def __call__(self, items: Sequence[np.ndarray]) -> dict[str, Tensor]:
        max_seconds = self.call_settings["max_seconds"]
        limit = None if max_seconds is None else round(max_seconds * self.processor.sampling_rate)
        encoded = self.processor(
            [np.asarray(x, dtype=np.float32)[:limit] for x in items],
            sampling_rate=self.processor.sampling_rate,
            padding=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return {"input_values": encoded["input_values"], "attention_mask": encoded["attention_mask"]}

    def reader_settings(self) -> dict[str, Any]:
        return {"sampling_rate": self.processor.sampling_rate, "max_seconds": self.call_settings["max_seconds"]}


class VideoPreprocessor(ProcessorWrapper):
    """Clips of exactly `num_frames` HxWx3 uint8 frames -> (batch, frames, 3, H, W)."""

    def __call__(self, items: Sequence[Sequence[np.ndarray]]) -> dict[str, Tensor]:
        clips = [list(clip) for clip in items]
        expected = self.call_settings["num_frames"]
        for clip in clips:
            if len(clip) != expected:
                raise ValueError(f"the video encoder takes {expected} frames per clip (got {len(clip)})")
        return {"pixel_values": self.processor(clips, return_tensors="pt")["pixel_values"]}

    def reader_settings(self) -> dict[str, Any]:
        return {"num_frames": self.call_settings["num_frames"], "frame_stride": self.call_settings["frame_stride"]}


class TransformersEncoder(FrozenEncoder):
    """Shared loading and identity; subclasses say how to build the preprocessor and read tokens.

    A model built from `model_config` is initialised from a seed derived from that config, so the same
    config always gives the same random weights (and a feature cache can trust its fingerprint).
    """

    def __init__(self, config: EncoderConfig) -> None:
        self.model_config = _read_model_config(config)  # the preprocessor needs it (image size, frames)
        super().__init__(config)

    @property
    def dim(self) -> int:
        return int(self.model_config.hidden_size)

    def _load_module(self) -> torch.nn.Module:
        from transformers import AutoModel

        if self.config.pretrained is not None:
            return _from_pretrained(AutoModel, self.config.pretrained, f"{self.kind} encoder")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._random_init_seed())
            return AutoModel.from_config(self.model_config)

    def _random_init_seed(self) -> int:
        described = json.dumps(self.config.model_config, sort_keys=True)
        return int(hashlib.sha256(described.encode()).hexdigest()[:8], 16)

    def weights_identity(self) -> dict[str, Any]:
        import transformers

        if self.config.pretrained is None:
            return {
                "random_init": self.config.model_config,
                "seed": self._random_init_seed(),
                "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
            }
        if is_bundled(self.config.pretrained):
            return bundled_identity(self.config.pretrained)
        if Path(self.config.pretrained).is_dir():
            return {"folder_sha256": folder_digest(self.config.pretrained)}
        return {"hub": self.config.pretrained, "commit": _hub_commit(self.config.pretrained)}

    def save_pretrained(self, folder: str) -> None:
        self.module.save_pretrained(folder)
        self.preprocessor.save_pretrained(folder)

    def _all_valid(self, tokens: Tensor) -> EncoderOutput:
        return EncoderOutput(tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device))


def _read_model_config(config: EncoderConfig) -> Any:
    from transformers import AutoConfig

    if config.pretrained is not None:
        return _from_pretrained(AutoConfig, config.pretrained, f"{config.kind} encoder config")
    settings = dict(config.model_config or {})
    model_type = settings.pop("model_type")
    return AutoConfig.for_model(model_type, **settings)


def _hub_commit(name: str) -> str:
    """The cached snapshot's commit: it pins every file of a hub model."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(name, "config.json")
    if not isinstance(path, str):
        raise EncoderLoadError(f"{name!r} has no config.json in the local Hugging Face cache, so its version is unknown")
    return Path(path).parent.name


class TextEncoder(TransformersEncoder):
    kind = "text"

    def _build_preprocessor(self) -> Preprocessor:
        from transformers import AutoTokenizer

        config = self.config
        settings = {"max_length": 128, **config.processor}
        if config.pretrained is not None:
            return TextPreprocessor(_from_pretrained(AutoTokenizer, config.pretrained, "tokenizer"), **settings)
        if not config.vocab:
            raise ValueError(
                "a text encoder built from `model_config` needs `vocab` (a list of words) for its"
                " tokenizer, or use `pretrained` to load a tokenizer with the model"
            )
        return TextPreprocessor(word_level_tokenizer(config.vocab), **settings)

    def encode(self, inputs: dict[str, Tensor]) -> EncoderOutput:
        hidden = self.module(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        return EncoderOutput(hidden.last_hidden_state, inputs["attention_mask"].bool())


def word_level_tokenizer(vocab: Sequence[str]) -> Any:
    """A BERT-style tokenizer over whole lowercase words, for tiny test encoders."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = list(SPECIAL_TOKENS) + [w for w in dict.fromkeys(vocab) if w not in SPECIAL_TOKENS]
    ids = {word: index for index, word in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab=ids, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


class ImageEncoder(TransformersEncoder):
    kind = "image"

    def _build_preprocessor(self) -> Preprocessor:
        from transformers import AutoImageProcessor, ViTImageProcessorPil

        config = self.config
        if config.pretrained is not None:
            return ImagePreprocessor(
                _from_pretrained(AutoImageProcessor, config.pretrained, "image processor", backend="pil", **config.processor)
            )
        size = self.model_config.image_size
        return ImagePreprocessor(ViTImageProcessorPil(**{"size": {"height": size, "width": size}, **config.processor}))

    def encode(self, inputs: dict[str, Tensor]) -> EncoderOutput:
        return self._all_valid(self.module(pixel_values=inputs["pixel_values"]).last_hidden_state)


class AudioEncoder(TransformersEncoder):
    """Waveforms -> one token per convolutional frame (20 ms for wav2vec2).

    An item's features never depend on what else is in its batch. Layer-norm models (wav2vec2-large)
    take an attention mask that hides the padding. Group-norm models (wav2vec2-base) were trained
    without one, and their first convolution normalises over the whole input, padding included; so
    they run on each group of equal-length items as its own unpadded batch (all
    at once when every clip has the same length, as in ESC-50; one by one at worst). Otherwise a
    feature cache built in one batching would differ from evaluation in another.
    """

    kind = "audio"

    def _build_preprocessor(self) -> Preprocessor:
        from transformers import AutoFeatureExtractor, Wav2Vec2FeatureExtractor

        config = self.config
        settings = dict(config.processor)
        # Ours, not the extractor's: how much of each sound the reader keeps (None: all of it).
        max_seconds = settings.pop("max_seconds", 10.0)
        if config.pretrained is not None:
            extractor = _from_pretrained(AutoFeatureExtractor, config.pretrained, "feature extractor", **settings)
        else:
            extractor = Wav2Vec2FeatureExtractor(**{"sampling_rate": 16000, **settings})
        return AudioPreprocessor(extractor, max_seconds=max_seconds)

    @property
    def takes_attention_mask(self) -> bool:
        """Layer-norm feature encoders do; group-norm ones (wav2vec2-base) must not get one (their
        model card says so: they were trained without it)."""
        return getattr(self.model_config, "feat_extract_norm", "layer") == "layer"

    def encoding_settings(self) -> dict[str, Any]:
        # Group-norm features cached before they were encoded unpadded depended on their batch:
        # a fingerprint of its own refuses such a cache.
        return {} if self.takes_attention_mask else {"batching": "equal-length groups, unpadded"}

    def encode(self, inputs: dict[str, Tensor]) -> EncoderOutput:
        values, samples = inputs["input_values"], inputs["attention_mask"].sum(-1)
        frames = self.module._get_feat_extract_output_lengths(samples)
        if self.takes_attention_mask:
            hidden = self.module(input_values=values, attention_mask=inputs["attention_mask"]).last_hidden_state
        else:
            hidden = self._encode_unpadded(values, samples, frames)
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        return EncoderOutput(hidden, positions[None, :] < frames[:, None])

    def _encode_unpadded(self, values: Tensor, samples: Tensor, frames: Tensor) -> Tensor:
        """(batch, max frames, dim) zero-padded: each group of items with the same number of samples
        run as one batch cut to that length, so no item sees padding."""
        hidden = torch.zeros(len(values), int(frames.max().clamp(min=0)), self.dim, device=values.device)
        for length in samples.unique().tolist():
            rows = (samples == length).nonzero().squeeze(1)
            count = int(frames[rows[0]])
            if count > 0:  # a clip shorter than one frame has no features, as when padded
                output = self.module(input_values=values[rows, :length]).last_hidden_state
                hidden[rows, :count] = output.to(hidden.dtype)  # bf16 under autocast, the buffer fp32
        return hidden


class VideoEncoder(TransformersEncoder):
    """Clips of `num_frames` frames -> space-time patch tokens."""

    kind = "video"

    def _build_preprocessor(self) -> Preprocessor:
        from transformers import AutoImageProcessor, VideoMAEImageProcessorPil

        config = self.config
        num_frames = int(self.model_config.num_frames)
        settings = dict(config.processor)
        # Ours, not the processor's: training clips span num_frames * frame_stride frames.
        frame_stride = int(settings.pop("frame_stride", 4))
        if config.pretrained is not None:
            processor = _from_pretrained(
                AutoImageProcessor, config.pretrained, "video processor", backend="pil", **settings
            )
        else:
            size = self.model_config.image_size
            defaults = {"size": {"shortest_edge": size}, "crop_size": {"height": size, "width": size}}
            processor = VideoMAEImageProcessorPil(**{**defaults, **settings})
        return VideoPreprocessor(processor, num_frames=num_frames, frame_stride=frame_stride)

    def encode(self, inputs: dict[str, Tensor]) -> EncoderOutput:
        return self._all_valid(self.module(pixel_values=inputs["pixel_values"]).last_hidden_state)


ENCODERS: dict[str, type[TransformersEncoder]] = {
    cls.kind: cls for cls in (TextEncoder, ImageEncoder, AudioEncoder, VideoEncoder)
}


def build_transformers_encoder(config: EncoderConfig) -> TransformersEncoder:
    if config.kind not in ENCODERS:
        raise ValueError(f"unknown encoder kind {config.kind!r}; valid kinds: {sorted(ENCODERS)}")
    return ENCODERS[config.kind](config)
