"""`oneencoder index` (an embeddings folder -> a faiss index per modality) and `oneencoder search` (one
query, from any modality the model embeds, against every indexed modality)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from jsonargparse import ArgumentParser

QUERY_OPTIONS = ("text", "audio", "image", "video")


def index_parser() -> ArgumentParser:
    from oneencoder.index import DEFAULT_APPROXIMATE_ABOVE, KINDS

    parser = ArgumentParser(
        prog="oneencoder index",
        description="Index an embeddings folder (from `oneencoder embed`): per modality an exact inner-product"
        " faiss index, or an approximate one above --approximate_above items (the trade-off is measured in"
        " benchmarks/README.md). The index records the model's fingerprint: queries from another model are refused.",
    )
    parser.add_argument("embeddings", help="an embeddings folder written by `oneencoder embed`")
    parser.add_argument("index", help="the folder to write index.json, <modality>.faiss and <modality>.jsonl into")
    parser.add_argument("--approximate_above", type=int, default=DEFAULT_APPROXIMATE_ABOVE,
                        help="modalities with more items get an approximate index")
    parser.add_argument("--kind", choices=list(KINDS), default="hnsw", help="the approximate index")
    parser.add_argument("--modality", nargs="+", default=None, help="modalities to index (default: all)")
    return parser


def index_command(argv: Sequence[str]) -> None:
    from oneencoder.index import build_index

    args = index_parser().parse_args(list(argv))
    path = build_index(args.embeddings, args.index, args.approximate_above, args.kind, args.modality)
    info = json.loads(path.read_text(encoding="utf-8"))
    for modality, described in info["modalities"].items():
        params = ", ".join(f"{name} {value}" for name, value in described["params"].items())
        print(f"{modality}: {described['items']} items, {described['kind']}" + (f" ({params})" if params else ""))
    print(f"wrote {path}")


def search_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="oneencoder search",
        description="Search an index with one query: a text, or a sound, image or video file. Prints the best"
        " matches in every indexed modality (or --modality), with their cosine scores and sources.",
    )
    parser.add_argument("index", help="an index folder written by `oneencoder index`")
    parser.add_argument("--text", default=None, help="a text query")
    for modality in QUERY_OPTIONS[1:]:
        parser.add_argument(f"--{modality}", default=None, help=f"a {modality} file to query with")
    parser.add_argument("--modality", nargs="+", default=None, help="indexed modalities to search (default: all)")
    parser.add_argument("--k", type=int, default=10, help="results per modality")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--model", default=None,
                        help="the model folder (default: the one recorded in the index); it must be the model"
                        " that embedded the collection")
    return parser


def search_command(argv: Sequence[str]) -> None:
    from oneencoder.index import SearchIndex, search_model
    from oneencoder.model import OneEncoder

    args = search_parser().parse_args(list(argv))
    given = [(modality, args[modality]) for modality in QUERY_OPTIONS if args[modality] is not None]
    if len(given) != 1:
        options = " | ".join(f"--{modality}" for modality in QUERY_OPTIONS)
        raise ValueError(f"give exactly one query ({options}); got {len(given)}")
    modality, item = given[0]
    index = SearchIndex.load(args.index)
    model_folder = args.model or index.model_folder
    if not Path(model_folder).is_dir():
        raise FileNotFoundError(
            f"model folder {model_folder} (recorded in {Path(args.index) / 'index.json'}) does not exist;"
            " pass the model that embedded the collection with --model FOLDER"
        )
    model = OneEncoder.from_pretrained(model_folder)
    results = search_model(index, model, modality, item, args.modality, args.k)
    if args.json:
        print(json.dumps(results_json(modality, item, index.model_fingerprint, results), indent=2, ensure_ascii=False))
    else:
        print(results_text(modality, item, results, index.info["modalities"]))


def results_json(modality: str, item: str, fingerprint: str, results: dict[str, list[Any]]) -> dict[str, Any]:
    """{"query": {"modality", "item"}, "model_fingerprint",
    "results": {modality: [{"rank", "score", "id", "source", "row", "caption"}]}}; "caption" only
    for a media hit whose record has an indexed caption."""
    return {
        "query": {"modality": modality, "item": item},
        "model_fingerprint": fingerprint,
        "results": {target: [{"rank": rank, "score": hit.score, "id": hit.id, "source": hit.source, "row": hit.row,
                              **({"caption": hit.caption} if hit.caption else {})}
                             for rank, hit in enumerate(hits, 1)]
                    for target, hits in results.items()},
    }


def results_text(modality: str, item: str, results: dict[str, list[Any]], described: dict[str, Any]) -> str:
    """One block per searched modality: rank, score, id, source and (media) caption of each hit."""
    lines = [f"query: {modality} {item!r}" if modality == "text" else f"query: {modality} {item}"]
    for target, hits in results.items():
        summary = described[target]
        lines += ["", f"{target} ({summary['items']} items, {summary['kind']} index):"]
        if not hits:
            lines.append("  no items")
        width = max((len(hit.id) for hit in hits), default=2)
        for rank, hit in enumerate(hits, 1):
            caption = f"  ({hit.caption})" if hit.caption else ""
            lines.append(f"  {rank:>3}  {hit.score:7.4f}  {hit.id:<{width}}  {hit.source}{caption}")
    return "\n".join(lines)
