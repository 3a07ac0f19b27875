"""A faiss index per modality over an embeddings folder, and search in it from any modality.

Folder layout (written by `build_index`, read by `SearchIndex.load`):
  index.json        {"format": "oneencoder-index", "format_version": 1, "model", "model_fingerprint",
                     "dim", "modalities": {m: {"items", "kind", "params"}}, "embeddings"}
  <modality>.faiss  the modality's faiss index; faiss id i is row i of
  <modality>.jsonl  the embeddings' rows ({"id", "modality", "source", ...}) in the same order.
index.json is written last and removed first, so a folder with one is complete.

Exact or approximate. Up to `DEFAULT_APPROXIMATE_ABOVE` (50k) vectors a modality gets an exact
inner-product index (IndexFlatIP: every score is the true cosine, recall 1, nothing to build); above it,
HNSW. Measured by `python -m benchmarks.search_speed` (benchmarks/results/search.json: 256-d unit
vectors, 2 cores shared with other jobs), one query at a time as `oneencoder search` and the search
page ask:
  - an exact query scans the whole collection: 0.4 ms at 10k, 0.8 ms at 20k, 7 ms at 50k, then 10-30
    ms at 100k, 70 ms at 200k and 180 ms at 1M, as the vectors outgrow the CPU's caches. Up to 50k it
    costs less than embedding the query itself (the demo's encoders, measured once on the same
    machine: 16 ms for a text, 24 ms for an image), so an approximate index would save nothing a
    person notices, while it costs a build (HNSW: 20-50 s per 100k vectors) and some recall.
  - HNSW (M=32, efConstruction=40, efSearch=128) answers in 0.2-1.5 ms from 10k to 1M. On vectors with
    structure, as a model's embeddings have (the benchmark's `structured` set: a 32-d latent spread
    into 256-d, plus noise), its recall@10 against exact search is 0.999 at 10k and 0.993 at 100k.
    On uniformly random unit vectors, the worst case for any approximate index (every neighbour
    nearly as far as any other), it falls to 0.86, 0.31 and 0.06 at 10k, 100k and 1M.
  - IVF-Flat (`kind="ivf"`: nlist 4 sqrt(n), probing a fifth of the lists) reaches 0.98 on the
    structured 100k at 2.5 times HNSW's time per query (1.6 against 0.65 ms), and at 1M takes 19 ms a
    query. It builds 2.5 to 12 times faster (76 s against 915 s at 1M) and adds no graph (HNSW adds
    256 bytes per vector to the 1 KiB vector): the choice for large collections rebuilt often.
Scores are inner products of L2-normalised embeddings, that is cosines: higher is closer.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import faiss
import numpy as np
from torch import Tensor

from .files import atomic_write_text, atomic_write_with
from .formats import read_format_header
from .readers import MediaError

FORMAT = "oneencoder-index"
FORMAT_VERSION = 1
INDEX_NAME = "index.json"
DEFAULT_APPROXIMATE_ABOVE = 50_000
KINDS = ("hnsw", "ivf")
HNSW_M = 32  # graph links per vector (twice as many on the bottom layer)
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = 128  # candidates kept per query: 0.993 recall@10 on structured 256-d vectors at 100k
IVF_LISTS_PER_SQRT = 4  # nlist = 4 sqrt(n), the usual rule
IVF_PROBE_FRACTION = 0.2  # lists visited per query: 0.98 recall@10 on structured 256-d vectors at 100k
IVF_MIN_PER_LIST = 39  # faiss's k-means wants at least 39 training points per centroid
IVF_TRAIN_PER_LIST = 64  # training sample: enough for k-means, a fraction of a large collection
REINDEX_HINT = "run `oneencoder index EMBEDDINGS {folder}` again"


class IndexFolderError(ValueError):
    """An index folder is missing, incomplete or damaged."""


class IndexModelMismatchError(ValueError):
    """A query comes from another model than the one whose embeddings were indexed."""


@dataclass
class Hit:
    """One search result: the indexed item at `row` of `modality`'s rows, with its cosine score;
    `caption`, for an image, sound or clip, the first indexed caption of its record (a file name or
    an emoji's code says little to a person), else None."""

    score: float
    id: str
    modality: str
    source: str
    row: int
    caption: str | None = None


# --- building ----------------------------------------------------------------------------------------


def index_kind(items: int, approximate_above: int, kind: str) -> str:
    """'exact' for a collection of at most `approximate_above` items, else the approximate `kind`."""
    if kind not in KINDS:
        raise ValueError(f"approximate index kind must be one of {list(KINDS)} (got {kind!r})")
    if approximate_above < 0:
        raise ValueError(f"approximate_above must be >= 0 (got {approximate_above})")
    return "exact" if items <= approximate_above else kind


def index_params(kind: str, items: int) -> dict[str, int]:
    """The parameters `make_index` builds `kind` with for `items` vectors (recorded in index.json)."""
    if kind == "exact":
        return {}
    if kind == "hnsw":
        return {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH}
    if kind == "ivf":
        nlist = max(1, min(round(IVF_LISTS_PER_SQRT * math.sqrt(items)), items // IVF_MIN_PER_LIST))
        return {"nlist": nlist, "nprobe": max(1, math.ceil(nlist * IVF_PROBE_FRACTION))}
    raise ValueError(f"index kind must be 'exact' or one of {list(KINDS)} (got {kind!r})")


def make_index(vectors: np.ndarray, kind: str, params: dict[str, int], seed: int = 0) -> faiss.Index:
    """A faiss inner-product index of `kind` holding `vectors` (n, D) float32, ids 0..n-1 in order."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    if kind == "exact":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params["efConstruction"]
    elif kind == "ivf":
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, params["nlist"], faiss.METRIC_INNER_PRODUCT)
        sample = min(len(vectors), params["nlist"] * IVF_TRAIN_PER_LIST)
        chosen = np.random.default_rng(seed).choice(len(vectors), sample, replace=False)
        index.train(vectors[np.sort(chosen)])
    else:
        raise ValueError(f"index kind must be 'exact' or one of {list(KINDS)} (got {kind!r})")
    index.add(vectors)
    set_search_params(index, kind, params)
    return index


def set_search_params(index: faiss.Index, kind: str, params: dict[str, int]) -> None:
    """Search-time settings, set on load as well: they are part of the recorded trade-off."""
    if kind == "hnsw":
        index.hnsw.efSearch = params["efSearch"]
    elif kind == "ivf":
        index.nprobe = params["nprobe"]


def build_index(embeddings_folder: str | os.PathLike[str], index_folder: str | os.PathLike[str],
                approximate_above: int = DEFAULT_APPROXIMATE_ABOVE, kind: str = "hnsw",
                modalities: Sequence[str] | None = None) -> Path:
    """Index every modality of an embeddings folder (or `modalities`) into `index_folder`; returns
    the path of its index.json. An index built before in the same folder is replaced."""
    from .embeddings import read_embeddings

    meta, tables = read_embeddings(embeddings_folder)
    chosen = list(tables) if modalities is None else list(modalities)
    missing = [m for m in chosen if m not in tables]
    if missing:
        raise ValueError(f"{embeddings_folder} has no embeddings for {missing}; it has {sorted(tables)}")
    folder = Path(index_folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / INDEX_NAME).unlink(missing_ok=True)  # the folder is incomplete until the new one is written
    described = {}
    for modality in chosen:
        table = tables[modality]
        vectors = table.vectors.detach().cpu().float().numpy()
        modality_kind = index_kind(len(vectors), approximate_above, kind)
        params = index_params(modality_kind, len(vectors))
        index = make_index(vectors, modality_kind, params)
        rows = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in table.rows)
        atomic_write_text(folder / f"{modality}.jsonl", rows)
        atomic_write_with(folder / f"{modality}.faiss", lambda tmp, index=index: faiss.write_index(index, tmp))
        described[modality] = {"items": len(vectors), "kind": modality_kind, "params": params}
    info = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": meta["model"],
            "model_fingerprint": meta["model_fingerprint"], "dim": meta["dim"], "modalities": described,
            "embeddings": str(embeddings_folder)}
    atomic_write_text(folder / INDEX_NAME, json.dumps(info, indent=2))
    return folder / INDEX_NAME


# --- loading and searching ---------------------------------------------------------------------------


class SearchIndex:
    """An index folder in memory: per modality its faiss index and its rows."""

    def __init__(self, folder: Path, info: dict[str, Any], indexes: dict[str, faiss.Index],
                 rows: dict[str, list[dict[str, Any]]]) -> None:
        self.folder = folder
        self.info = info
        self.indexes = indexes
        self.rows = rows

    @property
    def modalities(self) -> list[str]:
        return list(self.indexes)

    @property
    def model_folder(self) -> str:
        return self.info["model"]

    @property
    def model_fingerprint(self) -> str:
        return self.info["model_fingerprint"]

    @property
    def dim(self) -> int:
        return self.info["dim"]

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> SearchIndex:
        folder = Path(folder)
        info = _read_info(folder)
        indexes, rows = {}, {}
        for modality, described in info["modalities"].items():
            indexes[modality], rows[modality] = _read_modality(folder, modality, described, info["dim"])
        return cls(folder, info, indexes, rows)

    def check_model(self, fingerprint: str) -> None:
        """Refuse queries from a model other than the one whose embeddings were indexed: two models'
        spaces differ even where their dimensions agree, so their scores would mean nothing."""
        if fingerprint != self.model_fingerprint:
            raise IndexModelMismatchError(
                f"{self.folder} indexes embeddings of model {self.model_fingerprint} ({self.model_folder}),"
                f" but the query model is {fingerprint}: vectors of two models cannot be compared."
                " Embed and index the collection again with this model (`oneencoder embed`, then"
                " `oneencoder index`), or query with the model that made the index"
                f" (`--model {self.model_folder}`)"
            )

    def search(self, queries: Tensor, modality: str, k: int) -> list[list[Hit]]:
        """(q, D) query embeddings -> per query up to `k` hits in `modality`, best first."""
        if modality not in self.indexes:
            raise ValueError(f"{self.folder} has no {modality} index; it has {self.modalities}")
        if k < 1:
            raise ValueError(f"k must be >= 1 (got {k})")
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be (q, {self.dim}) embeddings (got shape {tuple(queries.shape)})")
        matrix = np.ascontiguousarray(queries.detach().cpu().float().numpy())
        scores, ids = self.indexes[modality].search(matrix, k)
        rows = self.rows[modality]
        return [[Hit(float(score), rows[i]["id"], modality, rows[i]["source"], int(i), self._caption(modality, rows[i]))
                 for score, i in zip(query_scores, query_ids) if i >= 0]  # -1: fewer than k items
                for query_scores, query_ids in zip(scores, ids)]

    def _caption(self, modality: str, row: dict[str, Any]) -> str | None:
        return None if modality == "text" else self._first_captions.get(row.get("record"))

    @cached_property
    def _first_captions(self) -> dict[str, str]:
        """{record id: its first indexed caption}; empty when no text is indexed or rows name no record."""
        captions: dict[str, str] = {}
        for row in self.rows.get("text", []):
            if row.get("record") is not None:
                captions.setdefault(row["record"], row["source"])
        return captions

    def row(self, modality: str, row: int) -> dict[str, Any]:
        """The stored row of an indexed item (its id, source, record ...)."""
        if modality not in self.rows:
            raise KeyError(f"{self.folder} has no {modality} index; it has {self.modalities}")
        if not 0 <= row < len(self.rows[modality]):
            raise IndexError(f"{modality} has rows 0..{len(self.rows[modality]) - 1} (got {row})")
        return self.rows[modality][row]


def _read_info(folder: Path) -> dict[str, Any]:
    path = folder / INDEX_NAME
    hint = REINDEX_HINT.format(folder=folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"index folder {folder} does not exist; build one with `oneencoder index`")
    if not path.is_file():
        raise IndexFolderError(f"{folder} has no {INDEX_NAME}: not an index folder, or its build stopped; {hint}")
    info = read_format_header(path, FORMAT, FORMAT_VERSION, IndexFolderError, "a oneencoder index", hint)
    return info


def _read_modality(folder: Path, modality: str, described: dict[str, Any],
                   dim: int) -> tuple[faiss.Index, list[dict[str, Any]]]:
    hint = REINDEX_HINT.format(folder=folder)
    index_path, rows_path = folder / f"{modality}.faiss", folder / f"{modality}.jsonl"
    for path in (index_path, rows_path):
        if not path.is_file():
            raise IndexFolderError(f"{path} is missing; {hint}")
    try:
        index = faiss.read_index(str(index_path))
    except RuntimeError as error:
        raise IndexFolderError(f"{index_path} is not a readable faiss index ({error}); {hint}") from None
    try:
        rows = [json.loads(line) for line in rows_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise IndexFolderError(f"{rows_path} is not valid JSON Lines ({error}); {hint}") from None
    if index.ntotal != len(rows) or index.ntotal != described["items"] or index.d != dim:
        raise IndexFolderError(
            f"{folder}: the {modality} index holds {index.ntotal} vectors of dimension {index.d}, its rows"
            f" file {len(rows)} rows, and {INDEX_NAME} says {described['items']} of dimension {dim}; {hint}"
        )
    set_search_params(index, described["kind"], described["params"])
    return index, rows


# --- queries -----------------------------------------------------------------------------------------


def embed_query(model: Any, modality: str, item: str | os.PathLike[str]) -> Tensor:
    """A query -> its (1, D) embedding: a text string, or the path of an image, sound or clip.
    A file that does not decode is a MediaError naming it."""
    if modality not in model.modalities:
        raise ValueError(f"the model has no {modality} encoder; it embeds {model.modalities}")
    if modality == "text":
        if not str(item).strip():
            raise ValueError("the text query is empty; give some words to search for")
        return model.embed("text", [str(item)])
    path = Path(item)
    if not path.is_file():
        raise MediaError(f"query {modality} file {path} does not exist or is not a file")
    return model.embed(modality, [path])


def search_model(index: SearchIndex, model: Any, modality: str, item: str | os.PathLike[str],
                 targets: Sequence[str] | None, k: int) -> dict[str, list[Hit]]:
    """Embed one query with `model` and search it in each of `targets` (default: every indexed
    modality); refuses a model other than the index's."""
    index.check_model(model.fingerprint())
    targets = index.modalities if targets is None else list(targets)
    unknown = [target for target in targets if target not in index.modalities]
    if unknown:
        raise ValueError(f"{index.folder} has no index for {unknown}; it has {index.modalities}")
    query = embed_query(model, modality, item)
    return {target: index.search(query, target, k)[0] for target in targets}
