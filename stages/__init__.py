"""Progressive training stages, one LightningModule each."""

from .align import AlignStage
from .export import ExportPretrained
from .pair_stage import PairStage
from .up import UPStage

__all__ = ["AlignStage", "ExportPretrained", "PairStage", "UPStage"]
