"""oneencoder: align many modalities into one embedding space with frozen encoders and small
trainable projections (OneEncoder, OneLLM, unified discrete representations)."""

from .config import EncoderConfig, HeadConfig, OneEncoderConfig
from .loss import ContrastiveLoss
from .model import OneEncoder

__all__ = ["ContrastiveLoss", "EncoderConfig", "HeadConfig", "OneEncoder", "OneEncoderConfig"]
