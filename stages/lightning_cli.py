"""LightningCLI for every stage: `oneencoder fit / validate / test / predict` and `oneencoder cache`.
Kept apart from `stages/cli.py` so that only these commands import Lightning."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

# The classes the configs name by class_path, imported here so that LightningCLI's subclass mode
# lists them in --help (the packages themselves load them only on first use).
from datamodules import BalancedDataModule, ManifestDataModule  # noqa: F401
from stages import AlignStage, CodebookStage, ExportPretrained, ProgressiveStage, UPStage  # noqa: F401

from .trainer import OneEncoderTrainer


class OneEncoderCLI(LightningCLI):
    """LightningCLI with OneEncoderTrainer, whose `trainer.precision` also takes `auto`."""

    def __init__(self, *args: Any, trainer_class: type[Trainer] = OneEncoderTrainer, **kwargs: Any) -> None:
        super().__init__(*args, trainer_class=trainer_class, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The data module preprocesses with the encoders' weight-free preprocessors in its workers, or
        # builds and checks the feature cache with them; their weights load only if something runs them.
        parser.link_arguments("model.encoders", "data.init_args.encoders", apply_on="instantiate")
