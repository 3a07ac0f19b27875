"""The `oneencoder` command: LightningCLI's fit / validate / test / predict for every stage, plus
`oneencoder data ...` to build data sets, `oneencoder cache` to encode a stage's data once,
`oneencoder pipeline` to chain stages and `oneencoder evaluate` for retrieval between all modalities."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence

from jsonargparse import ArgumentParser
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI


class OneEncoderCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The data module preprocesses with the encoders' weight-free preprocessors in its workers, or
        # builds and checks the feature cache with them; their weights load only if something runs them.
        parser.link_arguments("model.encoders", "data.init_args.encoders", apply_on="instantiate")


def data_command(argv: Sequence[str]) -> None:
    import logging

    from datamodules.converters import SOURCES, ConversionError, converter
    from datamodules.openmoji import VIDEO_PER_SPLIT, build_openmoji, count_records
    from datamodules.shapes import write_shapes_dataset

    parser = ArgumentParser(prog="oneencoder data", description="Build data sets in the manifest format.")
    commands = parser.add_subcommands()
    shapes = ArgumentParser(
        description="The planted coloured-shapes set: per caption an image, a sound (16 kHz, 0.5 s) and"
        " a video (8 frames)."
    )
    shapes.add_argument("root", help="folder to write images/, audio/, video/ and manifest.jsonl into")
    shapes.add_argument("--train_per_combo", type=int, default=6)
    shapes.add_argument("--size", type=int, default=32, help="image and video side in pixels (even)")
    shapes.add_argument("--seed", type=int, default=0)
    commands.add_subcommand("shapes", shapes)
    openmoji = ArgumentParser(
        description="Emoji from the OpenMoji npm package: per emoji its drawing, its name spoken (16 kHz)"
        " and captions; for some, a clip of the drawing panning, zooming or rotating. Needs rsvg-convert"
        " and espeak-ng (apt-get install librsvg2-bin espeak-ng), and npm unless --package is given."
    )
    openmoji.add_argument("root", help="folder to write images/, audio/, video/, build.json and manifest.jsonl into")
    openmoji.add_argument("--package", type=Optional[str], default=None,
                          help="an extracted openmoji package folder (default: npm pack it into ROOT/downloads)")
    openmoji.add_argument("--seed", type=int, default=0)
    openmoji.add_argument("--size", type=int, default=224, help="image and video side in pixels (even)")
    openmoji.add_argument("--frames", type=int, default=8, help="frames per clip")
    openmoji.add_argument("--limit", type=Optional[int], default=None, help="keep only this many emoji (quick runs)")
    for split, count in VIDEO_PER_SPLIT.items():
        openmoji.add_argument(f"--video_{split}", type=int, default=count, help=f"clips for {split} emoji")
    openmoji.add_argument("--workers", type=int, default=2, help="parallel tool calls")
    commands.add_subcommand("openmoji", openmoji)
    convert = ArgumentParser(description="Convert a public dataset's own layout to a manifest, keeping its splits.")
    convert.add_argument("source", help=f"one of {sorted(SOURCES)}")
    convert.add_argument("root", help="the dataset's top folder as distributed")
    convert.add_argument("out", help="the manifest to write (media paths are stored relative to its folder)")
    commands.add_subcommand("convert", convert)
    args = parser.parse_args(list(argv))
    if args.subcommand == "shapes":
        options = args.shapes
        manifest = write_shapes_dataset(options.root, options.train_per_combo, options.size, options.seed)
        print(f"wrote {manifest}")
    elif args.subcommand == "convert":
        options = args.convert
        try:
            print(converter(options.source)(Path(options.root), Path(options.out)).summary())
        except ConversionError as error:
            sys.exit(f"oneencoder data convert {options.source}: {error}")
    elif args.subcommand == "openmoji":
        logging.basicConfig(level=logging.INFO, format="%(message)s")  # what was kept, skipped, written
        options = args.openmoji
        clips = {split: options[f"video_{split}"] for split in VIDEO_PER_SPLIT}
        manifest = build_openmoji(options.root, options.package, seed=options.seed, size=options.size,
                                  video_per_split=clips, frames=options.frames, limit=options.limit,
                                  workers=options.workers)
        print(f"wrote {manifest}")
        for split, counts in count_records(manifest).items():
            print(f"{split}: {counts['emoji']} emoji, {counts['clips']} clips")


def cache_command(argv: Sequence[str]) -> None:
    """`oneencoder cache [--overwrite] --config STAGE.yaml [overrides]`: build the stage's feature cache."""
    import torch

    words = list(argv)
    overwrite = "--overwrite" in words
    words = [w for w in words if w != "--overwrite"]
    if not words or words[0] in ("-h", "--help"):
        print(cache_command.__doc__)
        return
    # The words come from `oneencoder cache ...` itself; LightningCLI's warning about args beside
    # sys.argv assumes they were meant for it.
    warnings.filterwarnings("ignore", message=r".*args parameter is intended to run from within Python.*")
    cli = OneEncoderCLI(subclass_mode_model=True, subclass_mode_data=True, run=False, args=words)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cli.datamodule.build_feature_cache(device, overwrite=overwrite)
    print(f"feature cache ready in {cli.datamodule.feature_cache}")


def pipeline_command(argv: Sequence[str]) -> None:
    from .pipeline import run_pipeline

    parser = ArgumentParser(
        prog="oneencoder pipeline",
        description="Run the stages of a pipeline config in order (skipping finished ones, resuming an"
        " interrupted one), then evaluate every pair of modalities.",
    )
    parser.add_argument("config", help="a pipeline config, e.g. configs/pipeline/shapes.yaml")
    args = parser.parse_args(list(argv))
    final = run_pipeline(args.config)
    print(f"final model: {final}")


def evaluate_command(argv: Sequence[str]) -> None:
    from .evaluate import evaluate_folder

    parser = ArgumentParser(
        prog="oneencoder evaluate",
        description="Retrieval between every pair of a model's modalities on a manifest split, both"
        " directions, with chance levels; records with a `label` are also classified zero-shot.",
    )
    parser.add_argument("model", help="a stage's output folder (config.json + model.safetensors)")
    parser.add_argument("manifest", help="a JSON Lines manifest")
    parser.add_argument("--split", default="test")
    parser.add_argument("--modalities", type=Optional[list[str]], default=None, help="default: all the model's")
    parser.add_argument("--ks", type=list[int], default=[1, 5, 10])
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--video_backend", default="decord")
    parser.add_argument("--templates", type=list[str], default=["{}"],
                        help="zero-shot prompts, {} where the class name goes, averaged per class")
    parser.add_argument("--classes", type=Optional[list[str]], default=None,
                        help="zero-shot class names (default: the split's labels)")
    parser.add_argument("--output", default=None, help="folder for results.json and results.md")
    args = parser.parse_args(list(argv))
    evaluation = evaluate_folder(args.model, args.manifest, args.split, modalities=args.modalities, ks=args.ks,
                                 batch_size=args.batch_size, num_workers=args.num_workers,
                                 video_backend=args.video_backend, templates=args.templates, classes=args.classes)
    if args.output:
        evaluation.write(args.output)
    print(evaluation.markdown())


TOOL_COMMANDS = {"data": data_command, "cache": cache_command, "pipeline": pipeline_command, "evaluate": evaluate_command}


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
