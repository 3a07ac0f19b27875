"""Package exports that load on first use, so that a command imports only what it runs: converting a
dataset needs neither torch nor Lightning, and importing them costs seconds and most of a gigabyte."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module-level `__getattr__` (PEP 562) for `package`: `exports` maps each public name to the
    submodule defining it (relative, e.g. ".model"), imported when the name is first read."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name], package), name)

    return __getattr__
