"""A collection's embeddings on disk, as `oneencoder embed` writes them: safetensors + JSON Lines,
readable with numpy alone.

Layout of an embeddings folder OUT:

    OUT/embeddings.json                    what made it and what it holds (below)
    OUT/<modality>/shard-00000.safetensors tensor "embeddings": float32 (n, D), each row of unit length
    OUT/<modality>/shard-00000.jsonl       n rows, same order: {"id", "modality", "source", ...}
    OUT/<modality>/shard-00001...          shards cover fixed ranges of the planned items

A row's `id` is unique within its modality: the manifest record's id for media, "<record id>#<caption
index>" for captions (a plain folder's records are files named by their path relative to it).
`source` is the media file's absolute path, or for text the caption itself; `record` names the
record, `caption` repeats a caption, `split` is the manifest split.

embeddings.json: {"format": "oneencoder-embeddings", "format_version": 1, "model": the model folder
as given, "model_fingerprint": "oneencoder-<16 hex>" (OneEncoder.fingerprint: vectors of two models
never compare), "dim": D, "source": the manifest or folder, "complete": bool, "items_per_shard",
"plan": what a resumed run must match, "modalities": {m: {"items": n, "shards": s, "from_cache": c,
"skipped": {source: reason}}}} (a skipped caption is named by its id: its text is empty).

Each shard's .jsonl is written first, then its .safetensors, each to a temporary name renamed into
place: a .safetensors that exists is a complete shard, which a resumed run never encodes again.
Loading without oneencoder (pip install numpy safetensors):

    import glob, json, numpy as np
    from safetensors.numpy import load_file
    shards = sorted(glob.glob("OUT/image/shard-*.safetensors"))
    vectors = np.concatenate([load_file(s)["embeddings"] for s in shards])  # (n, D) float32
    rows = [json.loads(line) for s in shards for line in open(s.replace(".safetensors", ".jsonl"))]
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from .files import atomic_write_text, atomic_write_with
from .formats import read_format_header

FORMAT = "oneencoder-embeddings"
FORMAT_VERSION = 1
HEADER_NAME = "embeddings.json"
TENSOR_NAME = "embeddings"
EMBED_HINT = "run `oneencoder embed MODEL SOURCE OUT` (again, with the same arguments, to finish an interrupted run)"


class EmbeddingsFolderError(ValueError):
    """An embeddings folder is missing, unfinished or damaged."""


@dataclass
class EmbeddingTable:
    """One modality's embeddings: `vectors` (n, D) float32 of unit length, `rows[i]` describing vector i."""

    modality: str
    vectors: Tensor
    rows: list[dict[str, Any]]


@dataclass
class Shard:
    """One shard as written: its vectors and rows, the items it skipped ({source: reason}) and how
    many of its vectors were projected from a feature cache instead of encoded."""

    vectors: Tensor
    rows: list[dict[str, Any]]
    skipped: dict[str, str]
    from_cache: int


def shard_paths(folder: str | os.PathLike[str], modality: str, index: int) -> tuple[Path, Path]:
    """(the .safetensors, the .jsonl) of shard `index` of `modality`."""
    stem = Path(folder) / modality / f"shard-{index:05d}"
    return stem.with_suffix(".safetensors"), stem.with_suffix(".jsonl")


def shard_done(folder: str | os.PathLike[str], modality: str, index: int) -> bool:
    return shard_paths(folder, modality, index)[0].is_file()


def write_shard(folder: str | os.PathLike[str], modality: str, index: int, shard: Shard) -> None:
    """Rows, then vectors (the marker of a finished shard), each written atomically."""
    if len(shard.rows) != len(shard.vectors):
        raise AssertionError(f"{len(shard.rows)} rows for {len(shard.vectors)} vectors")
    tensors_path, rows_path = shard_paths(folder, modality, index)
    rows_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(rows_path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in shard.rows))
    tensors = {TENSOR_NAME: shard.vectors.to(torch.float32).contiguous()}
    metadata = {"skipped": json.dumps(shard.skipped), "from_cache": str(shard.from_cache)}
    atomic_write_with(tensors_path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_shard(folder: str | os.PathLike[str], modality: str, index: int, vectors: bool = True) -> Shard:
    """A finished shard; `vectors` False reads only its rows and metadata (an empty tensor instead)."""
    tensors_path, rows_path = shard_paths(folder, modality, index)
    try:
        with safe_open(str(tensors_path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            count = handle.get_slice(TENSOR_NAME).get_shape()[0]
            table = handle.get_tensor(TENSOR_NAME) if vectors else torch.empty(0)
        skipped, from_cache = json.loads(metadata["skipped"]), int(metadata["from_cache"])
        with rows_path.open(encoding="utf-8") as lines:
            rows = [json.loads(line) for line in lines if line.strip()]
    except (SafetensorError, OSError, KeyError, ValueError) as error:
        raise EmbeddingsFolderError(
            f"{tensors_path} is not a readable shard ({type(error).__name__}: {error}): delete it and its .jsonl,"
            f" then {EMBED_HINT}; only that shard is encoded again"
        ) from None
    if len(rows) != count:
        raise EmbeddingsFolderError(
            f"{rows_path} has {len(rows)} rows for {count} vectors in {tensors_path.name}: delete both, then"
            f" {EMBED_HINT}; only that shard is encoded again"
        )
    return Shard(table, rows, skipped, from_cache)


def write_header(folder: str | os.PathLike[str], header: dict[str, Any]) -> None:
    atomic_write_text(Path(folder) / HEADER_NAME, json.dumps(header, indent=2, ensure_ascii=False))


def read_header(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """embeddings.json, checked to be this format (finished or not)."""
    path = Path(folder) / HEADER_NAME
    if not path.is_file():
        raise EmbeddingsFolderError(f"{path} not found: {folder} is not an embeddings folder; {EMBED_HINT}")
    header = read_format_header(path, FORMAT, FORMAT_VERSION, EmbeddingsFolderError, "an embeddings header",
                                EMBED_HINT)
    return header


def read_embeddings(folder: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, EmbeddingTable]]:
    """(embeddings.json, {modality: its table}) of a finished embeddings folder."""
    header = read_header(folder)
    if not header.get("complete"):
        raise EmbeddingsFolderError(f"{folder} is unfinished (an interrupted `oneencoder embed`); {EMBED_HINT}")
    tables = {}
    for modality, summary in header["modalities"].items():
        shards = [read_shard(folder, modality, index) for index in range(summary["shards"])]
        vectors = torch.cat([s.vectors for s in shards]) if shards else torch.empty(0, header["dim"])
        rows = [row for s in shards for row in s.rows]
        if len(rows) != summary["items"] or vectors.shape[1:] != (header["dim"],):
            raise EmbeddingsFolderError(
                f"{folder}/{modality} holds {tuple(vectors.shape)} vectors, {HEADER_NAME} says {summary['items']}"
                f" of dimension {header['dim']}: the folder was changed after it was written; {EMBED_HINT}"
                " with --overwrite"
            )
        tables[modality] = EmbeddingTable(modality, vectors, rows)
    return header, tables
