"""EfficientNet-Lite (ImageNet) as a frozen encoder: images as the 7x7 grid of the last feature map,
videos frame by frame with one pooled token per frame.

No package ships a video encoder, so a video here is its frames seen by the image encoder; what
happens over time is left to the video's Alignment Layer (give it `max_positions` for a temporal
position embedding).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..config import EncoderConfig
from .base import EncoderOutput, FrozenEncoder, Preprocessor, folder_digest
from .bundled import bundled_identity, is_bundled, resolve

FEATURE_DIM = 1280  # every Lite variant ends in a 1x1 convolution to 1280 channels
ARCHITECTURE = re.compile(r"^(efficientnet-lite\d)")
IMAGES_PER_PASS = 8


class EfficientNetPreprocessor(Preprocessor):
    """Images (PIL) or clips (lists of HxWx3 uint8 frames) -> resize the short side to `size`, centre
    crop, as uint8: a quarter of float32's bytes between dataloader workers (a batch of 64 eight-frame
    clips is 157 MB in float32); the encoder normalises."""

    def __init__(self, size: int = 224, num_frames: int | None = None, frame_stride: int = 1) -> None:
        self.size = size
        self.num_frames = num_frames
        self.frame_stride = frame_stride

    def __call__(self, items: Sequence[Any]) -> dict[str, Tensor]:
        if self.num_frames is None:
            return {"pixel_values": torch.stack([self._pixels(image) for image in items])}
        clips = []
        for clip in items:
            if len(clip) != self.num_frames:
                raise ValueError(f"the video encoder takes {self.num_frames} frames per clip (got {len(clip)})")
            clips.append(torch.stack([self._pixels(Image.fromarray(frame)) for frame in clip]))
        return {"pixel_values": torch.stack(clips)}

    def _pixels(self, image: Image.Image) -> Tensor:
        image = image.convert("RGB")
        scale = self.size / min(image.size)
        width, height = max(self.size, round(image.width * scale)), max(self.size, round(image.height * scale))
        image = image.resize((width, height), Image.Resampling.BICUBIC)
        left, top = (width - self.size) // 2, (height - self.size) // 2
        image = image.crop((left, top, left + self.size, top + self.size))
        return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)

    def settings(self) -> dict[str, Any]:
        return {"size": self.size, "num_frames": self.num_frames, "frame_stride": self.frame_stride,
                "resize": "short side, bicubic, centre crop", "normalise": "(x - 127) / 128"}

    def reader_settings(self) -> dict[str, Any]:
        return {} if self.num_frames is None else {"num_frames": self.num_frames, "frame_stride": self.frame_stride}

    def save_pretrained(self, folder: str) -> None:
        """Nothing to write: the settings live in the encoder's config."""


class EfficientNetEncoder(FrozenEncoder):
    """`pretrained` is `bundled:efficientnet-lite0` or a local state-dict file named after its
    architecture (`efficientnet-lite0-....pth`). `processor` takes `size` (default 224) and, for
    videos, `num_frames` (default 8) and `frame_stride` (default 1)."""

    def __init__(self, config: EncoderConfig) -> None:
        if config.pretrained is None:
            raise ValueError(
                "the efficientnet backend loads pretrained weights only: set `pretrained:"
                " bundled:efficientnet-lite0` or a local `efficientnet-lite0-*.pth` file"
            )
        if config.kind not in ("image", "video"):
            raise ValueError(f"the efficientnet backend encodes images and videos, not {config.kind!r}")
        self.kind = config.kind
        super().__init__(config)

    @property
    def dim(self) -> int:
        return FEATURE_DIM

    @property
    def weights_path(self) -> Path:
        return Path(resolve(self.config.pretrained))

    def _build_preprocessor(self) -> Preprocessor:
        settings = dict(self.config.processor)
        if self.config.kind == "video":
            settings = {"num_frames": 8, "frame_stride": 1, **settings}
        return EfficientNetPreprocessor(**settings)

    def _load_module(self) -> nn.Module:
        from efficientnet_lite_pytorch import EfficientNet

        path = self.weights_path
        match = ARCHITECTURE.match(path.name)
        if match is None:
            raise ValueError(f"{path}: the weights file's name must start with its architecture (efficientnet-lite0..4)")
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: set `pretrained` to an EfficientNet-Lite state-dict file")
        model = EfficientNet.from_name(match.group(1))
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        # Channels-last: oneDNN's bf16 convolutions run 1.4x faster in it (fp32 ones about the same).
        return _fold_batch_norms(_pad_inside_convolutions(model.eval())).to(memory_format=torch.channels_last)

    def weights_identity(self) -> dict[str, Any]:
        if is_bundled(self.config.pretrained):
            return bundled_identity(self.config.pretrained)
        return {"file_sha256": folder_digest(self.weights_path)}

    def encode(self, inputs: dict[str, Tensor]) -> EncoderOutput:
        pixels = inputs["pixel_values"]
        if self.config.kind == "image":
            tokens = self._feature_grid(pixels).flatten(2).transpose(1, 2)  # (batch, 49, 1280) at 224 px
        else:
            batch, frames = pixels.shape[:2]
            tokens = self._feature_grid(pixels.flatten(0, 1)).mean((2, 3)).reshape(batch, frames, -1)
        return EncoderOutput(tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device))

    def _feature_grid(self, images: Tensor) -> Tensor:
        """(n, 3, H, W) -> (n, 1280, H/32, W/32), a few images at a time: on two CPU cores 8 images per
        pass run 1.5-2x faster per image than 128 (the activations stay in cache), and a video batch
        of 64 clips is 512 images."""
        # (x - 127) / 128: the normalisation EfficientNet-Lite was trained with.
        return torch.cat([
            self.module.extract_features(((chunk.float() - 127.0) / 128.0).contiguous(memory_format=torch.channels_last))
            for chunk in images.split(IMAGES_PER_PASS)
        ])

    def save_pretrained(self, folder: str) -> None:
        raise NotImplementedError("pretrained encoders are referenced by `pretrained`, never copied into a model folder")


# Each convolution and the batch norm that follows it, by attribute name: the stem and head of the
# network, and the expansion, depthwise and projection convolutions of each inverted-residual block.
CONVOLUTION_NORMS = (("_conv_stem", "_bn0"), ("_conv_head", "_bn1"),
                     ("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))


def _fold_batch_norms(model: nn.Module) -> nn.Module:
    """Every batch norm (a fixed affine map in a frozen encoder) folded into the convolution before it:
    the same function, one pass over the activations fewer per layer, and under bf16 autocast no
    round trip through fp32 for the norm (encoding 15-25% faster on a 2-core CPU)."""
    for module in model.modules():
        for convolution, norm in CONVOLUTION_NORMS:
            if isinstance(getattr(module, norm, None), nn.BatchNorm2d) and hasattr(module, convolution):
                setattr(module, convolution, fuse_conv_bn_eval(getattr(module, convolution), getattr(module, norm)))
                setattr(module, norm, nn.Identity())
    return model


def _pad_inside_convolutions(model: nn.Module) -> nn.Module:
    """TensorFlow's 'same' padding, done by the package as a separate zero-padding pass before each
    convolution, moved into the convolution wherever it is symmetric (every stride-1 layer): the same
    numbers, one pass over the activations fewer (about 10% of an image's encoding time)."""
    for module in model.modules():
        padding = getattr(module, "static_padding", None)
        if isinstance(padding, nn.ZeroPad2d) and isinstance(module, nn.Conv2d):
            left, right, top, bottom = padding.padding
            if left == right and top == bottom:
                module.padding = (top, left)
                module.static_padding = nn.Identity()
    return model
