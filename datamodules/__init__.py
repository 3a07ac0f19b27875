"""LightningDataModules, datasets and readers; every source produces the same batch format from a manifest.
Loaded on first use: the dataset converters need neither torch nor Lightning, evaluation no Lightning."""

from oneencoder.lazy import lazy_exports

_EXPORTS = {
    **{name: "oneencoder.readers" for name in ("AudioReader", "ImageReader", "MediaError", "VideoReader", "build_reader")},
    **{name: ".manifest" for name in ("BadRecordError", "ManifestError", "Record", "read_manifest", "read_manifests")},
    **{name: ".pairs_dataset" for name in ("PairCollator", "PairDataset")},
    **{name: ".balanced" for name in ("BalancedDataModule", "Source")},
    "ManifestDataModule": ".pairs",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
