"""Markdown tables, as results.md, forgetting.md and the comparison page write them: one renderer,
so that every page lines up the same way."""

from __future__ import annotations

from typing import Sequence

# Where results.md's tables end and the Figures section that `oneencoder report` appends begins.
FIGURES_MARK = "<!-- figures: written by `oneencoder report`; everything below is redrawn with the figures -->"


def table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The header, its rule and one line per row."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
            *("| " + " | ".join(row) + " |" for row in rows)]


def routing_table(routing: dict[str, list[float]]) -> list[str]:
    """A mixture of experts' router weights: a row per modality, a column per expert."""
    experts = max(len(weights) for weights in routing.values())
    rows = [[modality, *(f"{weight:.3f}" for weight in weights)] for modality, weights in routing.items()]
    return table(["modality", *(f"expert {k + 1}" for k in range(experts))], rows)


def without_figures(page: str) -> str:
    """A results page's tables, without the Figures section a report appended."""
    return page.split(FIGURES_MARK)[0].rstrip("\n") + "\n"
