"""Progressive training stages, one LightningModule each."""

from .export import ExportPretrained
from .up import UPStage

__all__ = ["ExportPretrained", "UPStage"]
