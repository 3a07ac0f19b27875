"""Several stage configs merged into one, as LightningCLI merges `--config a.yaml --config b.yaml`:
the runner hashes and writes the merged config, so it must be exactly what `oneencoder fit` would
run. jsonargparse decides how two values merge from the types the classes declare, so this module
reads them from the classes' signatures."""

from __future__ import annotations

import collections.abc
import copy
import dataclasses
import importlib
import inspect
import types
import typing
from dataclasses import dataclass
from typing import Any, Sequence


def merge_stage_configs(configs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stage configs merged in order, each over the ones before, as LightningCLI (jsonargparse 4.53)
    merges `--config a.yaml --config b.yaml`, so that the runner hashes and writes exactly what
    `oneencoder fit` would run. jsonargparse's rules depend on the declared types, read here from the
    classes' signatures:
    - a class's arguments, a dataclass's fields and a section (`trainer`) merge key by key;
    - a `dict[str, X]` (a model's `encoders`, `heads`, a stage's `add`) holds the later file's keys
      only, each merged with the earlier value under the same key;
    - lists (`callbacks`, `pairs`, `sources`, `modalities`) and plain values are replaced;
    - a `class_path` naming another class keeps the earlier `init_args` that the new class accepts
      (by name: jsonargparse also drops one whose value the new type refuses) and drops the others.
    """
    from lightning.pytorch import Trainer  # only a stage listing several configs needs the Trainer's types

    sections = _Arguments({"trainer": _Arguments(_argument_types(Trainer))})
    merged = copy.deepcopy(configs[0])
    for config in configs[1:]:
        merged = _merge(merged, config, sections)
    return merged


@dataclass(frozen=True)
class _Arguments:
    """A mapping merged key by key, the value under each key typed as `types` says (unknown: untyped)."""

    types: dict[str, Any]


def _merge(earlier: Any, later: Any, hint: Any) -> Any:
    """`later` over `earlier` for a value declared as `hint` (a type, _Arguments, or None: unknown)."""
    if not isinstance(earlier, dict) or not isinstance(later, dict) or hint is typing.Any:
        return copy.deepcopy(later)
    if any(key in side for side in (earlier, later) for key in ("class_path", "init_args")):
        return _merge_class(earlier, later, hint)
    if not isinstance(hint, _Arguments):
        hint = _mapping_kind(hint)
    if isinstance(hint, _Arguments):
        merged = copy.deepcopy(earlier)
        for key, value in later.items():
            merged[key] = _merge(earlier.get(key), value, hint.types.get(key))
        return merged
    # dict[str, X]: the later file's keys only
    return {key: _merge(earlier.get(key), value, hint) for key, value in later.items()}


def _merge_class(earlier: dict[str, Any], later: dict[str, Any], hint: Any) -> dict[str, Any]:
    """A `class_path` + `init_args` value; without a class_path it means the declared class."""
    declared = next((t for t in _union_members(hint) if inspect.isclass(t)), None)
    new_class = _class_named(later.get("class_path", earlier.get("class_path"))) or declared
    old_class = _class_named(earlier.get("class_path")) or declared
    earlier_args = dict(earlier.get("init_args") or {})
    types = _argument_types(new_class) if new_class is not None else {}
    if new_class is not old_class and new_class is not None:
        accepted = inspect.signature(new_class).parameters
        earlier_args = {key: value for key, value in earlier_args.items() if key in accepted}
    merged = {**copy.deepcopy(earlier), **copy.deepcopy(later)}
    merged["init_args"] = _merge(earlier_args, later.get("init_args") or {}, _Arguments(types))
    if not merged["init_args"] and "init_args" not in earlier and "init_args" not in later:
        del merged["init_args"]
    return merged


def _mapping_kind(hint: Any) -> _Arguments | Any:
    """_Arguments for a dataclass or an unknown type; the value type X of a dict[str, X]."""
    for member in _union_members(hint):
        if dataclasses.is_dataclass(member):
            return _Arguments(_safe_type_hints(member))
        if typing.get_origin(member) in (dict, collections.abc.Mapping, collections.abc.MutableMapping) or member is dict:
            arguments = typing.get_args(member)
            return arguments[1] if len(arguments) == 2 else None
    return _Arguments({})


def _union_members(hint: Any) -> list[Any]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [member for member in typing.get_args(hint) if member is not type(None)]
    return [] if hint is None else [hint]


def _argument_types(cls: type) -> dict[str, Any]:
    return _safe_type_hints(cls.__init__)


def _safe_type_hints(target: Any) -> dict[str, Any]:
    """Declared types; none when they cannot be resolved (the values then merge as untyped mappings)."""
    try:
        return typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 -- any failure to resolve annotations only loses type information
        return {}


def _class_named(class_path: Any) -> type | None:
    """The class a `class_path` names; None when it names none (the stage itself will say so)."""
    if not isinstance(class_path, str):
        return None
    module, _, name = class_path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None
    return found if inspect.isclass(found) else None
