"""The `oneencoder` command: LightningCLI's fit / validate / test / predict for every stage, plus
`oneencoder data ...` to build data sets, `oneencoder cache` to encode a stage's data once,
`oneencoder pipeline` to chain stages, `oneencoder evaluate` for retrieval between all modalities,
`oneencoder report` to draw a results folder's figures again, `oneencoder compare` to put finished pipelines' results side by side, `oneencoder generalize` for a
codebook's cross-modal generalisation, `oneencoder toc` to choose and store TOC's dimensions, and a
trained model's use: `oneencoder embed` a collection, `oneencoder index` it, `oneencoder search` it from
any modality, `oneencoder serve` a search page.

A user's mistake (a path that is not there, a malformed manifest or config, a dataset not laid out as
its converter expects, a stale feature cache) ends any command with one line on stderr,
`oneencoder <command>: <message>`, and exit status 1; ONEENCODER_DEBUG=1 shows its traceback. Any other
exception is a bug and keeps its traceback. Each command imports only what it runs: Lightning (seconds
and most of a gigabyte) loads only for fit / validate / test / predict and cache.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence, Union, get_args

from jsonargparse import ArgumentParser, Namespace

from .processes import die_with_parent_under_runner
from .timing import duration

DEBUG_VARIABLE = "ONEENCODER_DEBUG"
PROJECT = Path(__file__).resolve().parents[1]
PACKAGES = ("oneencoder", "datamodules", "stages")
# Exceptions that mean the input is wrong, by the module defining them. They are looked up only in
# modules already imported (a module never imported cannot have raised), so listing them imports nothing.
USER_ERRORS: dict[str, tuple[str, ...]] = {
    "datamodules.manifest": ("ManifestError", "BadRecordError"),
    "datamodules.converters.base": ("ConversionError",),
    "datamodules.feature_cache": ("StaleCacheError",),
    "datamodules.openmoji": ("OpenMojiError",),
    "datamodules.iconify": ("IconSetError",),
    "oneencoder.readers": ("MediaError",),
    "oneencoder.model": ("ModelFolderError",),
    "oneencoder.retrieval": ("NonFiniteEmbeddingError",),
    "oneencoder.encoders.bundled": ("BundledModelError",),
    "oneencoder.encoders.transformers_backend": ("EncoderLoadError",),
    "stages.pipeline": ("PipelineError",),
    "yaml": ("YAMLError",),  # every YAML read is a config the user wrote
}
# Paths come from the user (arguments, configs, manifests): one that is missing or unusable is theirs to fix.
PATH_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def is_user_mistake(error: BaseException) -> bool:
    """A listed error, a path error, or a ValueError that this project's own code raised: its checks of
    configs, arguments and data say what is wrong and how to fix it. A ValueError raised inside a
    library (torch, numpy) is a bug."""
    listed = tuple(getattr(sys.modules[module], name)
                   for module, names in USER_ERRORS.items() if module in sys.modules for name in names)
    if isinstance(error, listed + PATH_ERRORS):
        return True
    return isinstance(error, ValueError) and _raised_by_project(error)


def _raised_by_project(error: BaseException) -> bool:
    """Whether the innermost frame of the error's traceback is in this project's packages."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return False
    where = Path(frames[-1].filename).resolve()
    return any(where.is_relative_to(PROJECT / package) for package in PACKAGES)


def command_name(words: Sequence[str]) -> str:
    """`oneencoder fit`, `oneencoder data convert`, ...: what an error line starts with."""
    named = list(itertools.takewhile(lambda word: not word.startswith("-"), words[:2]))
    return " ".join(["oneencoder", *named[: 2 if named[:1] == ["data"] else 1]])


def report_mistakes(command: str, run: Callable[[], None]) -> None:
    """Run a command; a user's mistake exits with `<command>: <message>` on one line instead of a
    traceback, unless ONEENCODER_DEBUG is set (to anything but 0)."""
    try:
        run()
    except Exception as error:
        if os.environ.get(DEBUG_VARIABLE, "0") not in ("", "0") or not is_user_mistake(error):
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        sys.exit(f"{command}: {message}")


def data_parser() -> ArgumentParser:
    """`oneencoder data shapes | shapes-av | openmoji | convert`; what each builds is imported only when it runs."""
    from datamodules.converters import SOURCES
    from datamodules.manifest import SPLITS

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
    shapes_av = ArgumentParser(
        description="The planted synchronous audio-visual set: per item 8 steps, each a coloured shape flashing"
        " in its frame and a tone of that colour's pitch in the same quarter second (or nothing), labelled"
        " with the item's dominant colour; the codebook stage's fine level must find the alignment."
    )
    shapes_av.add_argument("root", help="folder to write audio/, video/ and manifest.jsonl into")
    for split in SPLITS:  # the defaults live in datamodules.shapes_av
        shapes_av.add_argument(f"--{split}", type=Optional[int], default=None,
                               help=f"{split} items (default: ITEMS_PER_SPLIT in datamodules/shapes_av.py)")
    shapes_av.add_argument("--steps", type=int, default=8)
    shapes_av.add_argument("--size", type=int, default=32, help="video side in pixels (even)")
    shapes_av.add_argument("--seed", type=int, default=0)
    commands.add_subcommand("shapes-av", shapes_av)
    openmoji = ArgumentParser(
        description="Emoji from the OpenMoji npm package: per emoji its drawing, its name spoken (16 kHz)"
        " and captions; for some, a clip of the drawing panning, zooming or rotating. Needs librsvg"
        " and espeak-ng (apt-get install librsvg2-bin espeak-ng), and npm unless --package is given."
    )
    openmoji.add_argument("root", help="folder to write images/, audio/, video/, build.json and manifest.jsonl into")
    openmoji.add_argument("--package", type=Optional[str], default=None,
                          help="an extracted openmoji package folder (default: npm pack it into ROOT/downloads)")
    openmoji.add_argument("--seed", type=int, default=0)
    openmoji.add_argument("--size", type=int, default=224, help="image and video side in pixels (even)")
    openmoji.add_argument("--frames", type=int, default=8, help="frames per clip")
    openmoji.add_argument("--limit", type=Optional[int], default=None, help="keep only this many emoji (quick runs)")
    for split in SPLITS:  # the defaults live in datamodules.openmoji, which imports torch
        openmoji.add_argument(f"--video_{split}", type=Optional[int], default=None,
                              help=f"clips for {split} emoji (default: VIDEO_PER_SPLIT in datamodules/openmoji.py)")
    openmoji.add_argument("--workers", type=int, default=2, help="parallel tool calls")
    commands.add_subcommand("openmoji", openmoji)
    corpus = ArgumentParser(
        description="The demo's corpus: OpenMoji (as `data openmoji`) plus the same emoji in six more styles,"
        " one held-out style (test only) and named icons, from Iconify's npm packages; every record has"
        " `style`, `concept` and `source`, splits are by concept. Needs librsvg, espeak-ng and npm."
    )
    corpus.add_argument("root", help="folder to write images/, audio/, video/, manifest.jsonl and corpus.json into")
    corpus.add_argument("--seed", type=int, default=0)
    corpus.add_argument("--size", type=Optional[int], default=None,
                        help="image and video side in pixels, even (default: DEMO_SIZE in datamodules/corpus.py)")
    corpus.add_argument("--icons_per_set", type=Optional[str], default="demo",
                        help="icon concepts per icon set: a number, 'demo' (DEMO_ICONS_PER_SET) or 'all'")
    corpus.add_argument("--frames", type=int, default=8, help="frames per OpenMoji clip")
    corpus.add_argument("--workers", type=int, default=2, help="parallel tool calls")
    commands.add_subcommand("corpus", corpus)
    convert = ArgumentParser(description="Convert a public dataset's own layout to a manifest, keeping its splits.")
    convert.add_argument("source", help=f"one of {sorted(SOURCES)}")
    convert.add_argument("root", help="the dataset's top folder as distributed")
    convert.add_argument("out", help="the manifest to write (media paths are stored relative to its folder)")
    commands.add_subcommand("convert", convert)
    return parser


def data_command(argv: Sequence[str]) -> None:
    args = data_parser().parse_args(list(argv))
    {"shapes": _shapes, "shapes-av": _shapes_av, "openmoji": _openmoji, "corpus": _corpus,
     "convert": _convert}[args.subcommand](
        args[args.subcommand])


def _shapes(options: Namespace) -> None:
    from datamodules.shapes import write_shapes_dataset

    print(f"wrote {write_shapes_dataset(options.root, options.train_per_combo, options.size, options.seed)}")


def _shapes_av(options: Namespace) -> None:
    from datamodules.shapes_av import ITEMS_PER_SPLIT, write_shapes_av

    counts = {split: ITEMS_PER_SPLIT[split] if options[split] is None else options[split] for split in ITEMS_PER_SPLIT}
    print(f"wrote {write_shapes_av(options.root, counts, options.steps, options.size, options.seed)}")


def _openmoji(options: Namespace) -> None:
    import logging

    from datamodules.openmoji import VIDEO_PER_SPLIT, build_openmoji, count_records

    logging.basicConfig(level=logging.INFO, format="%(message)s")  # what was kept, skipped, written
    clips = {split: options[f"video_{split}"] for split in VIDEO_PER_SPLIT}
    clips = {split: VIDEO_PER_SPLIT[split] if count is None else count for split, count in clips.items()}
    manifest = build_openmoji(options.root, options.package, seed=options.seed, size=options.size,
                              video_per_split=clips, frames=options.frames, limit=options.limit,
                              workers=options.workers)
    print(f"wrote {manifest}")
    for split, counts in count_records(manifest).items():
        print(f"{split}: {counts['emoji']} emoji, {counts['clips']} clips")


def _corpus(options: Namespace) -> None:
    import logging

    from datamodules.corpus import DEMO_ICONS_PER_SET, DEMO_SIZE, build_corpus, summary_table

    logging.basicConfig(level=logging.INFO, format="%(message)s")  # per set: kept, matched, drawn, left out
    per_set = {"demo": DEMO_ICONS_PER_SET, "all": None}.get(options.icons_per_set, options.icons_per_set)
    if isinstance(per_set, str) and not per_set.isdigit():
        raise ValueError(f"--icons_per_set takes a number, 'demo' or 'all' (got {per_set!r})")
    started = time.monotonic()
    manifest = build_corpus(options.root, seed=options.seed, size=options.size or DEMO_SIZE,
                            icons_per_set=None if per_set is None else int(per_set), frames=options.frames,
                            workers=options.workers)
    print(f"wrote {manifest} in {duration(time.monotonic() - started)}")
    print(summary_table(manifest.parent / "corpus.json"))


def _convert(options: Namespace) -> None:
    from datamodules.converters import converter

    print(converter(options.source)(Path(options.root), Path(options.out)).summary())


def cache_command(argv: Sequence[str]) -> None:
    """`oneencoder cache [--overwrite] --config STAGE.yaml [overrides]`: build the stage's feature cache.

    Builds it, finishes an interrupted build, or encodes again only the shards holding changed files
    or new records; a complete, current cache is left as it is. A cache made differently (another
    encoder, preprocessing, dtype, video backend or cache format) is refused, since none of its shards
    can serve the config: `--overwrite` deletes such a cache and builds it anew, and changes nothing
    else. One build per folder at a time: a second one waits for the first, then finds the cache done.
    """
    words = list(argv)
    overwrite = "--overwrite" in words
    words = [w for w in words if w != "--overwrite"]
    if not words or words[0] in ("-h", "--help"):
        print(cache_command.__doc__)
        return
    build_stage_cache(words, overwrite)


def build_stage_cache(words: Sequence[str], overwrite: bool = False) -> None:
    """The feature cache of the stage that `words` (--config files and overrides, as `fit` takes them)
    configure, on the GPU when there is one; `oneencoder cache`, and the pipeline before each fit."""
    import torch

    from .lightning_cli import OneEncoderCLI

    # The words come from `oneencoder cache ...` or the pipeline; LightningCLI's warning about args
    # beside sys.argv assumes they were meant for it.
    warnings.filterwarnings("ignore", message=r".*args parameter is intended to run from within Python.*")
    cli = OneEncoderCLI(subclass_mode_model=True, subclass_mode_data=True, run=False, args=list(words))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cli.datamodule.build_feature_cache(device, overwrite=overwrite)
    modules = getattr(cli.datamodule, "source_modules", [cli.datamodule])  # BalancedDataModule: one per source
    print(f"feature cache ready in {', '.join(str(m.feature_cache) for m in modules if m.feature_cache)}")


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
    from oneencoder.readers import DEFAULT_MAX_PIXELS

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
    parser.add_argument("--skip_bad_records", type=bool, default=False,
                        help="leave out records whose media file is missing or does not decode (logged), instead of failing")
    parser.add_argument("--max_image_pixels", type=Optional[int], default=DEFAULT_MAX_PIXELS,
                        help="images with more pixels are bad records (decompression bombs); null: no limit")
    parser.add_argument("--where", action="append", default=None, metavar="KEY=VALUE",
                        help="evaluate only the records whose field KEY is VALUE (e.g. style=openmoji); repeat"
                        " for several fields, all of which must match")
    parser.add_argument("--precision", default="32-true", choices=["auto", "bf16-mixed", "32-true"],
                        help="what the encoders and the model embed in; auto: bf16-mixed where this machine runs"
                        " bf16 fast (as training's `precision: auto`; on the demo's final model every R@k within"
                        " 0.017 of fp32's); rankings are computed in fp32 either way")
    parser.add_argument("--feature_cache", action="append", default=None, metavar="DIR",
                        help="a stage's feature cache folder (its data.init_args.feature_cache); repeat for several:"
                        " a modality whose caches there together hold every record's item, made by the model's"
                        " encoder in this precision from the same files, is read from them instead of encoded")
    parser.add_argument("--output", default=None, help="folder for results.json and results.md")
    args = parser.parse_args(list(argv))
    if args.output and Path(args.output).exists() and not Path(args.output).is_dir():
        raise ValueError(f"--output {args.output} is a file; give a folder for results.json and results.md")
    malformed = [item for item in args.where or [] if "=" not in item]
    if malformed:
        raise ValueError(f"--where {malformed[0]}: give a record field and a value as KEY=VALUE, e.g. style=openmoji")
    where = dict(item.split("=", 1) for item in args.where) if args.where else None
    evaluation = evaluate_folder(args.model, args.manifest, args.split, modalities=args.modalities, ks=args.ks,
                                 batch_size=args.batch_size, num_workers=args.num_workers,
                                 video_backend=args.video_backend, templates=args.templates, classes=args.classes,
                                 skip_bad_records=args.skip_bad_records, max_image_pixels=args.max_image_pixels,
                                 where=where, precision=args.precision, feature_caches=args.feature_cache or ())
    print(evaluation.markdown())
    if args.output:
        from .report import write_report

        evaluation.write(args.output)
        print(f"report: {write_report(args.output)}")  # never None: the results were just written


def report_command(argv: Sequence[str]) -> None:
    from .report import write_report

    parser = ArgumentParser(
        prog="oneencoder report",
        description="Draw a results folder's figures (retrieval, joint space, similarity, zero-shot confusion,"
        " training curves, forgetting, router weights, codebook usage) into FOLDER/figures, FOLDER/report.html"
        " and results.md, from what the run saved there: nothing is recomputed.",
    )
    parser.add_argument("folder", help="a pipeline's `output` or the --output of `oneencoder evaluate`")
    parser.add_argument("--seed", type=int, default=0, help="the t-SNE map's and the sampled records' seed")
    args = parser.parse_args(list(argv))
    report = write_report(args.folder, args.seed)
    if report is None:
        raise FileNotFoundError(f"{args.folder}: no results.json, forgetting.json or training logs to draw; run an"
                                " evaluation (`oneencoder evaluate ... --output FOLDER`) or a pipeline into it first")
    print(f"report: {report}")


def compare_command(argv: Sequence[str]) -> None:
    from .compare import compare, write_page

    parser = ArgumentParser(
        prog="oneencoder compare",
        description="One results page putting pipelines side by side (retrieval, zero-shot accuracy,"
        " forgetting, trainable parameters and wall time per stage, router weights), read from what"
        " `oneencoder pipeline` wrote: nothing is recomputed.",
    )
    parser.add_argument("configs", nargs="+", help="pipeline configs whose runs finished, e.g."
                        " configs/pipeline/demo.yaml configs/pipeline/demo_moe.yaml")
    parser.add_argument("--labels", nargs="+", default=None, help="a label per config (default: each file's stem)")
    parser.add_argument("--evaluation", default=None,
                        help="the named evaluation to compare (default: each config's first)")
    parser.add_argument("--output", default=None, help="also write the page to this markdown file")
    args = parser.parse_args(list(argv))
    page = compare(args.configs, args.labels, args.evaluation)
    if args.output:
        write_page(page, args.output)
    print(page)


TOC_CHOICES = ("stored", "on", "off")  # the folder's choice if any; that choice, required; all dimensions


def _codebook_arguments(parser: ArgumentParser) -> None:
    """What `generalize` and `toc` share: the labelled data the features are extracted from."""
    parser.add_argument("--manifest", nargs="+", required=True, help="manifests (read as one) whose records have"
                        " a `label`, with train, val and test splits; each modality is read from the records that have it")
    parser.add_argument("--feature_cache", type=Optional[Union[str, dict[str, str]]], default=None,
                        help="the encoders' feature cache: a folder, or {modality: folder} as the stage's config has it")
    parser.add_argument("--cache_dtype", default="float32", help="the cache's storage dtype (the stage config's)")
    from oneencoder.precision import FP32, EncodingPrecision

    parser.add_argument("--cache_precision", default=FP32, choices=list(get_args(EncodingPrecision)),
                        help="the precision the cache's encoders ran in (the stage config's `cache_precision`)")
    parser.add_argument("--modalities", nargs="+", default=["audio", "video"],
                        help="the labelled modalities, every ordered pair of which is evaluated")
    parser.add_argument("--seed", type=int, default=0, help="the classifiers' initialisation and data order")


def generalize_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="oneencoder generalize",
        description="Cross-modal generalisation of codebook models: for every ordered pair of modalities,"
        " linear and MLP classifiers trained on the source's quantised train features (epoch chosen on its"
        " val split) are tested on the target's test split, beside chance, the majority class, the"
        " same-modality control and the continuous baseline; with codebook usage per modality.",
    )
    parser.add_argument("folders", nargs="+", help="codebook stage output folders, one row each")
    parser.add_argument("--labels", nargs="+", default=None,
                        help="a row label per folder, e.g. 'shared VQ' '+ FCID' (default: each folder's name)")
    parser.add_argument("--toc", nargs="+", default=None, choices=TOC_CHOICES,
                        help="per folder: stored (TOC's dimensions when the folder has a stored choice, else all;"
                        " the default), on (the stored choice, which must exist) or off (all dimensions)")
    _codebook_arguments(parser)
    parser.add_argument("--output", default=None,
                        help="also write <output>.json and <output>.md, e.g. outputs/codebook/generalization")
    return parser


def _per_folder(values: list[str] | None, folders: list[str], option: str) -> list[str] | None:
    if values is not None and len(values) != len(folders):
        raise ValueError(f"{option} has {len(values)} values for {len(folders)} folders; give one per folder")
    return values


def generalize_command(argv: Sequence[str]) -> None:
    from oneencoder.codebook_model import CodebookModel

    from .codebook_features import extract_features
    from .generalize import cross_modal_generalization, generalization_table, write_generalization

    args = generalize_parser().parse_args(list(argv))
    labels = _per_folder(args.labels, args.folders, "--labels") or [Path(f).name for f in args.folders]
    tocs = _per_folder(args.toc, args.folders, "--toc") or ["stored"] * len(args.folders)
    if len(set(labels)) != len(labels):
        raise ValueError(f"--labels must name each row once, got {labels}")
    rows = {}
    for label, folder, toc in zip(labels, args.folders, tocs):
        model = CodebookModel.from_pretrained(folder)
        if toc == "on" and model.config.toc is None:
            raise ValueError(f"--toc on for {folder}, which stores no TOC choice; store one with"
                             f" `oneencoder toc {folder} --k K` or give --toc stored or off")
        features = extract_features(model, args.manifest, args.feature_cache, args.modalities, toc != "off",
                                    args.cache_dtype, args.cache_precision)
        rows[label] = cross_modal_generalization(features, model.config.codebook.codes, seed=args.seed)
    if args.output:
        written = write_generalization(rows, args.output)
        print(f"wrote {written[0]} and {written[1]}")
    print(generalization_table(rows))


def toc_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="oneencoder toc",
        description="Choose how many dimensions TOC keeps: report cross-modal generalisation for each k of"
        " --sweep (beside all dimensions), then store --k in the folder.",
    )
    parser.add_argument("folder", help="a codebook stage output folder")
    parser.add_argument("--k", type=int, required=True, help="the number of dimensions to store as the choice")
    parser.add_argument("--sweep", type=int, nargs="*", default=[], help="the ks to report, e.g. 32 64 128 192 256")
    _codebook_arguments(parser)
    parser.add_argument("--output", default=None, help="also write the sweep to <output>.json and <output>.md")
    return parser


def toc_command(argv: Sequence[str]) -> None:
    from oneencoder.codebook_model import CodebookModel

    from .codebook_features import extract_features
    from .generalize import generalization_table, toc_sweep, write_generalization

    args = toc_parser().parse_args(list(argv))
    model = CodebookModel.from_pretrained(args.folder)
    if args.sweep:
        features = extract_features(model, args.manifest, args.feature_cache, args.modalities, False, args.cache_dtype,
                                    args.cache_precision)
        rows = toc_sweep(features, model.config.codebook.codes, args.sweep, model.choose_toc, seed=args.seed)
        if args.output:
            written = write_generalization(rows, args.output)
            print(f"wrote {written[0]} and {written[1]}")
        print(generalization_table(rows))
    model.choose_toc(args.k)
    model.save_toc(args.folder)
    print(f"stored TOC k = {args.k} in {args.folder}")


def lightning_command(argv: Sequence[str] | None) -> None:
    """fit / validate / test / predict: LightningCLI, reading sys.argv when `argv` is None."""
    from .lightning_cli import OneEncoderCLI

    OneEncoderCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=None if argv is None else list(argv),
    )


def embed_command(argv: Sequence[str]) -> None:
    from .embed import embed_command as run

    run(argv)


def index_command(argv: Sequence[str]) -> None:
    from .search import index_command as run

    run(argv)


def search_command(argv: Sequence[str]) -> None:
    from .search import search_command as run

    run(argv)


def serve_command(argv: Sequence[str]) -> None:
    from .serve import serve_command as run

    run(argv)


TOOL_COMMANDS = {"data": data_command, "cache": cache_command, "pipeline": pipeline_command,
                 "evaluate": evaluate_command, "report": report_command, "compare": compare_command, "generalize": generalize_command,
                 "toc": toc_command, "embed": embed_command, "index": index_command, "search": search_command,
                 "serve": serve_command}


def main(argv: Sequence[str] | None = None) -> None:
    die_with_parent_under_runner()
    # Frozen encoders stay in eval mode on purpose; Lightning's warning about that is noise here.
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    words = list(sys.argv[1:] if argv is None else argv)
    if words and words[0] in TOOL_COMMANDS:
        report_mistakes(command_name(words), lambda: TOOL_COMMANDS[words[0]](words[1:]))
    else:
        report_mistakes(command_name(words), lambda: lightning_command(argv))


if __name__ == "__main__":
    main()
