"""oneencoder: align many modalities into one embedding space with frozen encoders and small
trainable projections (OneEncoder, OneLLM, unified discrete representations)."""

from .lazy import lazy_exports

_EXPORTS = {"ContrastiveLoss": ".loss", "EncoderConfig": ".config", "HeadConfig": ".config",
            "OneEncoder": ".model", "OneEncoderConfig": ".config", "ProjectionConfig": ".config"}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)  # torch loads with the first of these, not with oneencoder.files
