"""Converters from public datasets' own on-disk layouts to the manifest format, keeping their official
splits: `oneencoder data convert <source> <root> <out.jsonl>`.

Each source lives in its own module with `convert(root: Path, out: Path) -> Conversion`; the registry
names the module so that a source's imports load only when it is used. A converter that finds no record
to write fails, naming where it looked, rather than leave an empty manifest.
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from typing import Callable

from .base import Conversion, ConversionError, check_output, write_manifest

SOURCES: dict[str, str] = {  # source name -> module:function
    "coco": "datamodules.converters.coco:convert",
    "coco-karpathy": "datamodules.converters.coco:convert_karpathy",
    "flickr30k": "datamodules.converters.flickr30k:convert",
    "flickr30k-csv": "datamodules.converters.flickr30k:convert_results_csv",
    "textcaps": "datamodules.converters.textcaps:convert",
    "librispeech": "datamodules.converters.librispeech:convert",
    "msrvtt": "datamodules.converters.msrvtt:convert",
    "cifar10": "datamodules.converters.cifar10:convert",
    "imagefolder": "datamodules.converters.imagefolder:convert",
    "esc50": "datamodules.converters.esc50:convert",
    "ave": "datamodules.converters.ave:convert",
    "ucf101": "datamodules.converters.ucf101:convert",
    "ucf101-shared": "datamodules.converters.ucf101:convert_shared",
    "vggsound": "datamodules.converters.vggsound:convert",
    "vggsound-shared": "datamodules.converters.vggsound:convert_shared",
}


def converter(source: str) -> Callable[[Path, Path], Conversion]:
    """`source`'s converter, which first checks that its output path can become a manifest file (a
    conversion can take hours: a folder there should not fail it at the end)."""
    if source not in SOURCES:
        raise ConversionError(f"unknown source {source!r}; sources: {sorted(SOURCES)}")
    module, function = SOURCES[source].split(":")
    convert = getattr(importlib.import_module(module), function)

    @functools.wraps(convert)
    def checked(root: Path, out: Path) -> Conversion:
        check_output(Path(out))
        return convert(Path(root), Path(out))

    return checked


__all__ = ["SOURCES", "Conversion", "ConversionError", "converter", "write_manifest"]
