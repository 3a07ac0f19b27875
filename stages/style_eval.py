"""Retrieval per style and across styles, for a manifest that draws the same concepts in several styles
(every record has a `style` and a `concept`). Evaluated as one set, a style never trained on would hide
in the mean, and an image's look-alikes in other styles would count as misses. So, per value of a
record field (`by`, default `style`): text->image and image->text on that style's records only
(relevant: the same record, as stages/evaluate.py has it), and whether split `train` holds any of its
records (a style it holds none of is held out, read from the manifest); and across styles: image->image
from one style's drawings into another's, relevant: the same `concept`. Images and captions are
embedded once, and every figure ranks a subset of those rows with stages/evaluate.py's pair_result."""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from datamodules.manifest import Record, read_manifest
from oneencoder import OneEncoder
from oneencoder.precision import FP32
from oneencoder.readers import DEFAULT_MAX_PIXELS

from .evaluate import (
    Embedded,
    PairResult,
    embed_split,
    metric_cell,
    of_records,
    pair_result,
    serving_caches,
    split_records,
    write_results,
)
from .markdown import table

MODALITIES = ("image", "text")  # what a style evaluation embeds
CONCEPT = "concept"  # what images of two styles share when they draw the same thing
TRAIN = "train"  # the split whose styles count as trained on


@dataclass
class StyleEvaluation:
    """`within`: each style's text->image and image->text results, as (style, result); `across`:
    image->image results whose query and gallery are styles; `held_out`: the styles with no record in
    split `train`."""

    manifest: str
    split: str
    by: str
    styles: list[str]
    held_out: list[str]
    within: list[tuple[str, PairResult]] = field(default_factory=list)
    across: list[PairResult] = field(default_factory=list)
    where: dict[str, str] | None = None
    precision: str = FP32  # what the encoders and the model embedded in

    def _named(self) -> list[tuple[str, PairResult]]:
        """Every result under its flat name: `twemoji/text->image`, `twemoji->openmoji/image->image`."""
        return [(f"{style}/{r.name}", r) for style, r in self.within] + [(f"{r.name}/image->image", r) for r in self.across]

    def to_dict(self) -> dict[str, Any]:
        """results-<name>.json: flat metric names (`twemoji/text->image/R@1`) with the chance levels beside them."""
        named = self._named()
        return {
            "manifest": self.manifest,
            "split": self.split,
            **({"where": self.where} if self.where else {}),
            "precision": self.precision,
            "by": self.by,
            "styles": self.styles,
            "held_out": self.held_out,
            "metrics": {f"{name}/{k}": v for name, r in named for k, v in r.metrics.items()},
            "chance": {f"{name}/{k}": v for name, r in named for k, v in r.chance.items()},
            "sizes": {name: {"queries": r.queries, "gallery": r.gallery_size} for name, r in named},
        }

    def markdown(self) -> str:
        title = (f"Retrieval per `{self.by}` on `{self.manifest}`, split `{self.split}`{of_records(self.where)}"
                 " (relevant: the same record; chance in brackets)")
        lines = [title, ""]
        if self.within:
            keys = list(self.within[0][1].metrics)
            columns = [self.by, "query -> gallery", *(f"{k} (chance)" for k in keys), "queries", "gallery", "in train"]
            rows = [[style, r.name, *(metric_cell(r, k) for k in keys), str(r.queries), str(r.gallery_size),
                     "held out" if style in self.held_out else "yes"] for style, r in self.within]
            lines += table(columns, rows)
        else:
            lines.append(f"(no `{self.by}` has records with both an image and a caption)")
        if self.across:
            recalls = [k for k in self.across[0].metrics if k.startswith("R@")]
            for key in dict.fromkeys((recalls[0], recalls[-1])):
                lines += ["", *self._matrix(key)]
        return "\n".join(lines) + "\n"

    def _matrix(self, key: str) -> list[str]:
        """One metric of `across`: a row per query style, a column per gallery style, among the styles
        that share a concept with another; a dash where two share none."""
        cells = {(r.query, r.gallery): metric_cell(r, key) for r in self.across}
        styles = [s for s in self.styles if any(s in pair for pair in cells)]
        rows = [[query, *(cells.get((query, gallery), "-") for gallery in styles)] for query in styles]
        title = (f"Image->image {key} (chance) across `{self.by}`, relevant: the same `{CONCEPT}`"
                 " (rows: query, columns: gallery)")
        return [title, "", *table(["query \\ gallery", *styles], rows)]

    def write(self, folder: str | os.PathLike[str], extra: dict[str, Any] | None = None, stem: str = "results") -> None:
        write_results(folder, self.markdown(), {**self.to_dict(), **(extra or {})}, stem)


def evaluate_styles(
    model: OneEncoder,
    manifest: str,
    split: str = "test",
    by: str = "style",
    ks: Sequence[int] = (1, 5, 10),
    batch_size: int = 64,
    num_workers: int = 0,
    video_backend: str = "decord",
    skip_bad_records: bool = False,
    max_image_pixels: int | None = DEFAULT_MAX_PIXELS,
    where: Mapping[str, str] | None = None,
    precision: str = FP32,
    feature_caches: Sequence[str | os.PathLike[str]] = (),
) -> StyleEvaluation:
    """Per value of the records' `by` field, text->image and image->text on its records; across
    values, image->image where the query's concept has an image in the gallery's (pair_result keeps
    the queries and gallery items of the concepts both have). Every record of the split (of those
    `where` keeps) needs `by` and `concept`. `precision`: what the encoders and the model embed in;
    `feature_caches`: where the frozen features may be read from (evaluate.serving_caches)."""
    records = split_records(manifest, split, where)
    styles, concepts = _values(records, by, manifest, split), _values(records, CONCEPT, manifest, split)
    names = list(dict.fromkeys(styles))  # in the manifest's order
    trained = {str(r.fields[by]) for r in read_manifest(manifest) if r.split == TRAIN and by in r.fields}
    evaluation = StyleEvaluation(str(manifest), split, by, names, [s for s in names if s not in trained],
                                 where=dict(where) if where else None, precision=precision)
    place = f"{manifest} ({split!r} split)"
    caches = serving_caches(model, records, MODALITIES, feature_caches, precision, video_backend)
    images, texts = (embed_split(model, records, m, place, batch_size, num_workers, video_backend, skip_bad_records,
                                 max_image_pixels, precision, caches.get(m)) for m in MODALITIES)
    style_index = {s: i for i, s in enumerate(names)}
    concept_index = {c: i for i, c in enumerate(dict.fromkeys(concepts))}
    style_of = torch.tensor([style_index[s] for s in styles])
    concept_of = torch.tensor([concept_index[c] for c in concepts])
    drawings = []  # each style's images, owned by their concept
    for i, style in enumerate(names):
        image, text = (_rows(e, style_of[e.owners] == i) for e in (images, texts))
        if bool(torch.isin(image.owners, text.owners).any()):
            evaluation.within += [(style, pair_result("text", "image", text, image, ks)),
                                  (style, pair_result("image", "text", image, text, ks))]
        drawings.append(Embedded(image.embeddings, concept_of[image.owners]))
    for (a, query), (b, gallery) in itertools.permutations(zip(names, drawings), 2):
        if bool(torch.isin(query.owners, gallery.owners).any()):
            evaluation.across.append(pair_result(a, b, query, gallery, ks))
    return evaluation


def _rows(embedded: Embedded, keep: torch.Tensor) -> Embedded:
    return Embedded(embedded.embeddings[keep], embedded.owners[keep])


def _values(records: Sequence[Record], name: str, manifest: str, split: str) -> list[str]:
    """Every record's `name` field; a record without one is an error naming it."""
    missing = [r for r in records if name not in r.fields]
    if missing:
        raise ValueError(f"{missing[0].where()}: no `{name}` field ({len(missing)} such {split!r} records in"
                         f" {manifest}); an evaluation by style needs `{name}` on every record it evaluates")
    return [str(r.fields[name]) for r in records]
