"""Progressive training stages, one LightningModule each (loaded on first use: `oneencoder data` and
`oneencoder evaluate` never import Lightning)."""

from oneencoder.lazy import lazy_exports

_EXPORTS = {"AlignStage": ".align", "CodebookStage": ".codebook", "LossWeights": ".codebook", "ExportPretrained": ".export", "PairStage": ".pair_stage",
            "ProgressiveStage": ".progressive", "NewModality": ".progressive", "UPStage": ".up"}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
