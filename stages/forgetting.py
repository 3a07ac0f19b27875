"""The forgetting table: how each trained pair's retrieval moves as later stages train, from the
results of every stage's model on one evaluation split (the runner's `evaluate_each_stage`).

For each pair of modalities some stage trained together, in both directions, R@1 and R@10 right after
the first stage that trained it and after every later stage, and the change from the first value to
the last. A stage that leaves a pair's parts frozen must show a change of exactly 0 (the same weights
embed the same items the same way); a stage that retrains a shared projection may move it either way.

Plain functions over results.json dicts (stages/evaluate.py's `metrics`: `"image->text/R@1": 0.5`),
no Lightning and no model, so that the table is easy to test and to rebuild from files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Collection, Iterable, Mapping, Sequence

from oneencoder.files import atomic_write_text

from .markdown import table as markdown_table

METRICS = ("R@1", "R@10")


def first_trained(stages: Sequence[str], stage_pairs: Mapping[str, Iterable[Collection[str]]]) -> dict[frozenset[str], str]:
    """Each trained pair and the first stage that trained it, in stage order."""
    found: dict[frozenset[str], str] = {}
    for stage in stages:
        for pair in sorted(sorted(p) for p in stage_pairs.get(stage, ())):
            found.setdefault(frozenset(pair), stage)
    return found


def forgetting_table(stages: Sequence[str], stage_pairs: Mapping[str, Iterable[Collection[str]]],
                     results: Mapping[str, Mapping[str, Any] | None], metrics: Sequence[str] = METRICS) -> dict[str, Any]:
    """{"stages": [...], "pairs": {"image->text": {"trained_at": stage, "R@1": {stage: value or None},
    ..., "change": {"R@1": last - first or None, ...}}}}. `stage_pairs`: the pairs each stage itself
    trained; `results`: each stage's results dict (None or a missing figure gives None)."""
    stages = list(stages)
    table: dict[str, Any] = {"stages": stages, "pairs": {}}
    for pair, trained_at in first_trained(stages, stage_pairs).items():
        since = stages[stages.index(trained_at):]
        a, b = sorted(pair)
        for query, gallery in ((a, b), (b, a)):
            row: dict[str, Any] = {"trained_at": trained_at}
            for metric in metrics:
                row[metric] = {stage: _figure(results.get(stage), f"{query}->{gallery}/{metric}") for stage in since}
            row["change"] = {metric: _change(row[metric][since[0]], row[metric][since[-1]]) for metric in metrics}
            table["pairs"][f"{query}->{gallery}"] = row
    return table


def _figure(results: Mapping[str, Any] | None, key: str) -> float | None:
    value = ((results or {}).get("metrics") or {}).get(key)
    return float(value) if isinstance(value, (int, float)) else None


def _change(first: float | None, last: float | None) -> float | None:
    return None if first is None or last is None else last - first


def forgetting_markdown(table: Mapping[str, Any], heading: str = "Forgetting") -> str:
    """One row per pair direction and metric, one column per stage (blank before the pair was
    trained), the change last: `0` means exactly the same figure, a signed value any other."""
    stages = table["stages"]
    pairs = table["pairs"]
    if not pairs:
        return f"{heading}\n\n(no trained pairs)\n"
    metrics = [key for key in next(iter(pairs.values())) if key not in ("trained_at", "change")]
    columns = ["pair", "trained at", "metric", *stages, "change"]
    rows = [
        [name, row["trained_at"], metric, *(_cell(row[metric][stage]) if stage in row[metric] else "" for stage in stages),
         _signed(row["change"][metric])]
        for name, row in pairs.items() for metric in metrics
    ]
    lines = [heading, "", *markdown_table(columns, rows)]
    lines += ["", "change: the last stage's figure minus the one right after the pair was first trained"
                  " (0: exactly equal)."]
    return "\n".join(lines) + "\n"


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _signed(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "0" if value == 0 else f"{value:+.3f}"


def write_forgetting(folder: str | os.PathLike[str], table: Mapping[str, Any], heading: str,
                     stem: str = "forgetting") -> str:
    """<stem>.json and <stem>.md in `folder`; returns the markdown."""
    folder = Path(folder)
    markdown = forgetting_markdown(table, heading)
    atomic_write_text(folder / f"{stem}.json", json.dumps(table, indent=2))
    atomic_write_text(folder / f"{stem}.md", markdown)
    return markdown
