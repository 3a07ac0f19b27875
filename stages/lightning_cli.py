"""LightningCLI for every stage: `oneencoder fit / validate / test / predict` and `oneencoder cache`.
Kept apart from `stages/cli.py` so that only these commands import Lightning."""

from __future__ import annotations

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

# The classes the configs name by class_path, imported here so that LightningCLI's subclass mode
# lists them in --help (the packages themselves load them only on first use).
from datamodules import BalancedDataModule, ManifestDataModule  # noqa: F401
from stages import AlignStage, CodebookStage, ExportPretrained, ProgressiveStage, UPStage  # noqa: F401


class OneEncoderCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The data module preprocesses with the encoders' weight-free preprocessors in its workers, or
        # builds and checks the feature cache with them; their weights load only if something runs them.
        parser.link_arguments("model.encoders", "data.init_args.encoders", apply_on="instantiate")
