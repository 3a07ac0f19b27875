"""Peak memory of the evaluation's retrieval ranking at scale: `oneencoder.retrieval.first_relevant_ranks`
ranks queries a chunk at a time (chunk sized from `MEMORY_BUDGET`), where the evaluation used to build
the whole queries x gallery similarity matrix and relevance mask.

100k queries against 100k gallery items by default, random unit vectors of dimension 256, one relevant
item per query. The ranking runs in a fresh process; its peak is that process's peak resident memory
(ru_maxrss) minus the same figure taken just after the embeddings were allocated, so the embeddings
themselves (2 x 100 MB) and torch's own footprint are not counted. The old full matrix is estimated, not
run: 4 bytes per similarity plus 1 per mask cell.

    python -m benchmarks.eval_memory [--queries N] [--gallery N] [--dim D] [--name NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
MIB = 1 << 20


def measure(queries: int, gallery: int, dim: int) -> dict:
    """In this process: allocate the embeddings, take the baseline, rank, take the peak (Linux: KiB)."""
    import torch

    from oneencoder import retrieval

    generator = torch.Generator().manual_seed(0)
    query_vectors = torch.nn.functional.normalize(torch.randn(queries, dim, generator=generator), dim=-1)
    gallery_vectors = torch.nn.functional.normalize(torch.randn(gallery, dim, generator=generator), dim=-1)
    query_owners, gallery_owners = torch.arange(queries), torch.arange(gallery)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    ranks = retrieval.first_relevant_ranks(query_vectors, query_owners, gallery_vectors, gallery_owners)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    chunk = retrieval.rows_per_chunk(gallery)
    return {
        "queries": queries, "gallery": gallery, "dim": dim, "threads": torch.get_num_threads(),
        "memory_budget_bytes": retrieval.MEMORY_BUDGET, "chunk_rows": chunk,
        "baseline_bytes": baseline, "peak_above_baseline_bytes": peak - baseline,
        "bytes_per_chunk_cell": (peak - baseline) / (min(chunk, queries) * gallery),
        "seconds": seconds, "median_rank": float(ranks.float().median() + 1),
        "full_matrix_bytes": {"similarity_float32": 4 * queries * gallery, "relevance_mask": queries * gallery},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--gallery", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--name", default="eval_memory", help="results/<name>.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.queries, args.gallery, args.dim)))
        return
    command = [sys.executable, "-m", "benchmarks.eval_memory", "--child", "--queries", str(args.queries),
               "--gallery", str(args.gallery), "--dim", str(args.dim)]
    result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    result["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    full = sum(result["full_matrix_bytes"].values())
    print("| queries x gallery | dim | chunk rows | peak above baseline | full matrix + mask (old) | time |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.queries:,} x {args.gallery:,} | {args.dim} | {result['chunk_rows']} |"
          f" {result['peak_above_baseline_bytes'] / MIB:,.0f} MiB | {full / MIB:,.0f} MiB (est.) |"
          f" {result['seconds']:.0f} s ({result['threads']} threads) |")


if __name__ == "__main__":
    main()
