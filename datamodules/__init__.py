"""LightningDataModules and readers; every source produces the same batch format from a manifest."""

from .manifest import BadRecordError, ManifestError, Record, read_manifest
from .pairs import ManifestDataModule
from .readers import AudioReader, ImageReader, MediaError, VideoReader, build_reader

__all__ = [
    "AudioReader", "BadRecordError", "ImageReader", "ManifestDataModule", "ManifestError", "MediaError", "Record",
    "VideoReader", "build_reader", "read_manifest",
]
