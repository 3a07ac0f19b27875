"""LightningDataModules and readers; every source produces the same batch format from a manifest."""

from .manifest import BadRecordError, ManifestError, Record, read_manifest
from .pairs import ManifestDataModule
from .readers import MediaError

__all__ = ["BadRecordError", "ManifestDataModule", "ManifestError", "MediaError", "Record", "read_manifest"]
