"""The `oneencoder` command: LightningCLI's fit / validate / test / predict for every stage, plus
`oneencoder data ...` to build data sets and `oneencoder cache` to encode a stage's data once."""

from __future__ import annotations

import sys
import warnings
from typing import Sequence

from jsonargparse import ArgumentParser
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

class OneEncoderCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The data module preprocesses with the encoders' weight-free preprocessors in its workers, or
        # builds and checks the feature cache with them; their weights load only if something runs them.
        parser.link_arguments("model.encoders", "data.init_args.encoders", apply_on="instantiate")


def data_command(argv: Sequence[str]) -> None:
    from datamodules.shapes import write_shapes_dataset

    parser = ArgumentParser(prog="oneencoder data", description="Build data sets in the manifest format.")
    commands = parser.add_subcommands()
    shapes = ArgumentParser(description="The planted coloured-shapes image-text set.")
    shapes.add_argument("root", help="folder to write images/ and manifest.jsonl into")
    shapes.add_argument("--train_per_combo", type=int, default=6)
    shapes.add_argument("--size", type=int, default=32)
    shapes.add_argument("--seed", type=int, default=0)
    commands.add_subcommand("shapes", shapes)
    args = parser.parse_args(list(argv))
    if args.subcommand == "shapes":
        options = args.shapes
        manifest = write_shapes_dataset(options.root, options.train_per_combo, options.size, options.seed)
        print(f"wrote {manifest}")


def cache_command(argv: Sequence[str]) -> None:
    """`oneencoder cache [--overwrite] --config STAGE.yaml [overrides]`: build the stage's feature cache."""
    import torch

    words = list(argv)
    overwrite = "--overwrite" in words
    words = [w for w in words if w != "--overwrite"]
    if not words or words[0] in ("-h", "--help"):
        print(cache_command.__doc__)
        return
    cli = OneEncoderCLI(subclass_mode_model=True, subclass_mode_data=True, run=False, args=words)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cli.datamodule.build_feature_cache(device, overwrite=overwrite)
    print(f"feature cache ready in {cli.datamodule.feature_cache}")


TOOL_COMMANDS = {"data": data_command, "cache": cache_command}


def main(argv: Sequence[str] | None = None) -> None:
    # Frozen encoders stay in eval mode on purpose; Lightning's warning about that is noise here.
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    words = list(sys.argv[1:] if argv is None else argv)
    if words and words[0] in TOOL_COMMANDS:
        TOOL_COMMANDS[words[0]](words[1:])
        return
    OneEncoderCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=None if argv is None else words,
    )


if __name__ == "__main__":
    main()
