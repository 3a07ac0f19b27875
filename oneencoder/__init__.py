"""oneencoder: align many modalities into one embedding space with frozen encoders and small
trainable projections (OneEncoder, OneLLM, unified discrete representations)."""

from .config import EncoderConfig, OneEncoderConfig
from .loss import ContrastiveLoss
from .model import OneEncoder

__all__ = ["ContrastiveLoss", "EncoderConfig", "OneEncoder", "OneEncoderConfig"]
