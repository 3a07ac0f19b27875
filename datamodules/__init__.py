"""LightningDataModules and readers; every source produces the same batch format from a manifest."""

from oneencoder.readers import (
    AudioReader,
    ImageReader,
    MediaError,
    VideoReader,
    build_reader,
)

from .manifest import BadRecordError, ManifestError, Record, read_manifest, read_manifests
from .pairs import ManifestDataModule

__all__ = [
    "AudioReader", "BadRecordError", "ImageReader", "ManifestDataModule", "ManifestError", "MediaError", "Record",
    "VideoReader", "build_reader", "read_manifest", "read_manifests",
]
