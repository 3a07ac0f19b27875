"""The JSON file that says what a saved folder is (a model's config.json, an embeddings folder's
embeddings.json, an index's index.json): `format` names the kind, `format_version` the layout. Read
and checked in one way, so that a file of another kind, a damaged one or one from a newer release
gets one clear error naming it, never a KeyError further on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_format_header(path: Path, kind: str, version: int, error: type[ValueError], what: str,
                       hint: str) -> dict[str, Any]:
    """The JSON object at `path`, checked to have `"format": kind` and a `format_version` of at most
    `version`. Problems raise `error`: `what` names the expected file in the message ("a OneEncoder
    config") and `hint` says how to get a good one. The caller checks that `path` exists: what a
    missing file means differs by folder."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as problem:
        raise error(f"{path} is not valid JSON ({problem}); {hint}") from None
    if not isinstance(payload, dict) or payload.get("format") != kind:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise error(f"{path} is not {what} (format {found!r}, expected {kind!r}); {hint}")
    if payload.get("format_version", 0) > version:
        raise error(f"{path} has format_version {payload['format_version']}; this oneencoder reads up to"
                    f" {version}: upgrade oneencoder")
    return payload
