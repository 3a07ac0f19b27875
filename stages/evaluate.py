"""Retrieval between every pair of a model's modalities on a manifest split, both directions, with
the chance level beside each figure: pairs never trained together included (transitive alignment).
Records with a `label` are also classified zero-shot, OneEncoder's CIFAR-10 protocol: each class name
in prompt templates, embedded as text, averaged over the templates, nearest class wins. For a mixture
of projection experts, each modality's mean router weight per expert is reported beside them. The maths
(rankings in bounded memory, chance levels, prototypes, accuracy@k) is library code in
oneencoder/retrieval.py and oneencoder/zero_shot.py: this module reads records, embeds them and
assembles the tables."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from datamodules.feature_cache import (
    HEADER_NAME,
    FeatureCache,
    ServedFeatures,
    StaleCacheError,
    pad_features,
    signable,
    signature_memo,
    sources,
)
from datamodules.manifest import BadRecordError, Record, read_manifest
from datamodules.pairs_dataset import PairCollator, PairDataset
from oneencoder import OneEncoder
from oneencoder.files import atomic_write_text
from oneencoder.model import read_config
from oneencoder.precision import AUTO, FP32, autocast, choose_precision, resolve_precision
from oneencoder.readers import DEFAULT_MAX_PIXELS, build_reader
from oneencoder.retrieval import chance_levels, check_finite, first_relevant_ranks, recall_at_k, relevant_counts
from oneencoder.zero_shot import (
    accuracy_at_k,
    accuracy_ks,
    chance_accuracy,
    class_prompts,
    class_prototypes,
    majority_share,
)

from .markdown import routing_table, table
from .report_data import ReportData, embeddings_path

if TYPE_CHECKING:
    from .style_eval import StyleEvaluation


@dataclass
class Embedded:
    """One modality's embeddings on a split: a row per item, `owners` the record index of each row;
    `routing` each row's router weights per expert (rows, K) for a mixture of experts, else None."""

    embeddings: Tensor
    owners: Tensor
    routing: Tensor | None = None


@dataclass
class PairResult:
    query: str
    gallery: str
    metrics: dict[str, float]
    chance: dict[str, float]
    queries: int
    gallery_size: int

    @property
    def name(self) -> str:
        return f"{self.query}->{self.gallery}"


@dataclass
class ZeroShotResult:
    """One modality's labelled records classified among `classes` class names."""

    modality: str
    metrics: dict[str, float]  # acc@k
    chance: dict[str, float]  # k / classes
    majority: float  # always answering the most frequent label
    records: int
    classes: int
    templates: int


@dataclass
class Evaluation:
    """All pairs' results; `trained` (pairs of modalities trained together), when known, marks the
    others as transitive in the table; `where`, the record filter the figures were computed under."""

    manifest: str
    split: str
    results: list[PairResult] = field(default_factory=list)
    trained: set[frozenset[str]] | None = None
    unpaired: list[str] = field(default_factory=list)  # pairs of modalities no record has both of
    zero_shot: list[ZeroShotResult] = field(default_factory=list)
    routing: dict[str, list[float]] = field(default_factory=dict)  # modality -> mean weight per expert (MoE)
    where: dict[str, str] | None = None
    precision: str = FP32  # what the encoders and the model embedded in (bf16-mixed: under autocast)
    report_data: ReportData | None = None  # what the figures need besides results.json (stages/report.py)

    def to_dict(self) -> dict[str, Any]:
        """results.json: flat metric names (`audio->image/R@1`) with the chance levels beside them."""
        data = {
            "manifest": self.manifest,
            "split": self.split,
            **({"where": self.where} if self.where else {}),
            "precision": self.precision,
            "metrics": {f"{r.name}/{k}": v for r in self.results for k, v in r.metrics.items()},
            "chance": {f"{r.name}/{k}": v for r in self.results for k, v in r.chance.items()},
            "sizes": {r.name: {"queries": r.queries, "gallery": r.gallery_size} for r in self.results},
        }
        if self.trained is not None:
            data["trained_pairs"] = sorted(sorted(pair) for pair in self.trained)
        if self.unpaired:
            data["unpaired"] = self.unpaired
        if self.zero_shot:
            data["zero_shot"] = {
                "metrics": {f"{z.modality}/zero-shot/{k}": v for z in self.zero_shot for k, v in z.metrics.items()},
                "chance": {f"{z.modality}/zero-shot/{k}": v for z in self.zero_shot for k, v in z.chance.items()},
                "majority": {f"{z.modality}/zero-shot": z.majority for z in self.zero_shot},
                "sizes": {z.modality: {"records": z.records, "classes": z.classes, "templates": z.templates}
                          for z in self.zero_shot},
            }
        if self.routing:
            data["routing"] = self.routing
        return data

    def markdown(self) -> str:
        lines = self._retrieval_lines()
        if self.unpaired:
            lines += ["", f"No record has both of: {', '.join(self.unpaired)} (not evaluated)."]
        if self.routing:
            lines += ["", "Router weights: each modality's mean weight per expert over the split's items", "",
                      *routing_table(self.routing)]
        return "\n".join(lines + self._zero_shot_lines()) + "\n"

    def _retrieval_lines(self) -> list[str]:
        if not self.results:
            return ["(no pairs evaluated)"]
        keys = list(self.results[0].metrics)
        columns = ["query -> gallery", *(f"{k} (chance)" for k in keys), "queries", "gallery"]
        if self.trained is not None:
            columns.append("trained together")
        rows = []
        for r in self.results:
            cells = [r.name, *(metric_cell(r, k) for k in keys), str(r.queries), str(r.gallery_size)]
            if self.trained is not None:
                cells.append("yes" if frozenset((r.query, r.gallery)) in self.trained else "no (transitive)")
            rows.append(cells)
        return [f"Retrieval on `{self.manifest}`, split `{self.split}`{of_records(self.where)}", "",
                *table(columns, rows)]

    def _zero_shot_lines(self) -> list[str]:
        if not self.zero_shot:
            return []
        keys = list(self.zero_shot[0].metrics)
        columns = ["modality", *(f"{k} (chance)" for k in keys), "majority class", "records", "classes"]
        rows = [
            [z.modality, *(f"{z.metrics[k]:.3f} ({z.chance[k]:.3f})" for k in keys), f"{z.majority:.3f}",
             str(z.records), str(z.classes)]
            for z in self.zero_shot
        ]
        first = self.zero_shot[0]
        title = (f"Zero-shot classification by `label` ({first.classes} classes, {first.templates} prompt"
                 f" template{'s' if first.templates > 1 else ''} averaged)")
        return ["", title, "", *table(columns, rows)]

    def write(self, folder: str | os.PathLike[str], extra: dict[str, Any] | None = None, stem: str = "results") -> None:
        """<stem>.md, <stem>-embeddings.safetensors (when embedded here), then <stem>.json."""
        if self.report_data is not None:
            Path(folder).mkdir(parents=True, exist_ok=True)
            self.report_data.save(embeddings_path(folder, stem))
        write_results(folder, self.markdown(), {**self.to_dict(), **(extra or {})}, stem)


def write_results(folder: str | os.PathLike[str], markdown: str, data: dict[str, Any], stem: str) -> None:
    """<stem>.md and <stem>.json in `folder`, the json last: its presence says the results are complete."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / f"{stem}.md", markdown)
    atomic_write_text(folder / f"{stem}.json", json.dumps(data, indent=2))


def of_records(where: Mapping[str, str] | None) -> str:
    """`where` for a heading: ", records with style=openmoji" (nothing without a filter)."""
    return f", records with {where_text(where)}" if where else ""


def where_text(where: Mapping[str, str]) -> str:
    return ", ".join(f"{key}={value}" for key, value in where.items())


def _fmt(key: str, value: float) -> str:
    return f"{value:.1f}" if key == "MedR" else f"{value:.3f}"


def metric_cell(result: PairResult, key: str) -> str:
    """A table cell: the figure with its chance level in brackets."""
    return f"{_fmt(key, result.metrics[key])} ({_fmt(key, result.chance[key])})"


@torch.no_grad()
def embed_records(
    model: OneEncoder,
    records: Sequence[Record],
    modality: str,
    batch_size: int = 64,
    num_workers: int = 0,
    video_backend: str = "decord",
    skip_bad_records: bool = False,
    max_image_pixels: int | None = DEFAULT_MAX_PIXELS,
    precision: str = FP32,
    cache: ServedFeatures | None = None,
) -> Embedded:
    """Every item of `modality` in `records` (all captions for text), read, encoded and projected in
    `precision` (bf16-mixed: under autocast; reading and preprocessing stay outside it), with each
    item's router weights when the model is a mixture of experts (from the same encoder features: the
    encoder, by far the dearest part, runs once); with `skip_bad_records`, items that cannot be read
    are left out (and logged) instead of failing. With `cache` (these records' items, see
    serving_caches) the frozen features are read from it: only the trained part runs."""
    if cache is not None:
        dataset = PairDataset(list(records), (modality,), skip_bad_records=skip_bad_records, caches={modality: cache})
        collator = PairCollator({modality: pad_features}, (modality,))
    else:
        encoder = model.encoders[modality]
        readers = {} if modality == "text" else {
            modality: build_reader(modality, encoder.preprocessor, video_backend, max_image_pixels)
        }
        dataset = PairDataset(list(records), (modality,), skip_bad_records=skip_bad_records, readers=readers)
        collator = PairCollator({modality: encoder.preprocessor}, (modality,))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collator)
    device = next(model.parameters()).device
    chunks, owners, routing = [], [], []
    for batch in tqdm(loader, desc=f"embedding {modality}", unit="batch", leave=False):
        if not batch["size"]:  # every record of the batch skipped
            continue
        inputs = {k: v.to(device) for k, v in batch["inputs"][modality].items()}
        with autocast(precision, device):
            encoded = model.encode(modality, inputs)
            chunks.append(model.project(modality, encoded.features, encoded.mask).float().cpu())
            weights = model.routing(modality, encoded.features, encoded.mask)
        if weights is not None:
            routing.append(weights.float().cpu())
        owners.append(batch["owners"][modality][:, 0])
    if not chunks:
        raise BadRecordError(f"none of the {len(records)} records' {modality} items could be read (all skipped as bad)")
    return Embedded(torch.cat(chunks), torch.cat(owners), torch.cat(routing) if routing else None)


def embed_split(model: OneEncoder, records: Sequence[Record], modality: str, where: str, batch_size: int = 64,
                num_workers: int = 0, video_backend: str = "decord", skip_bad_records: bool = False,
                max_image_pixels: int | None = DEFAULT_MAX_PIXELS, precision: str = FP32,
                cache: ServedFeatures | None = None) -> Embedded:
    """embed_records on the records that have `modality`, with owners indexing `records` (so that
    every modality's rows name the same records), refusing NaN embeddings; `where` names the records
    (manifest and split) in that error."""
    positions = torch.tensor([i for i, r in enumerate(records) if modality in r.fields])
    rows = embed_records(model, [records[i] for i in positions], modality, batch_size, num_workers, video_backend,
                         skip_bad_records, max_image_pixels, precision, cache)
    check_finite(rows.embeddings, modality, where)
    return Embedded(rows.embeddings, positions[rows.owners], rows.routing)


def serving_caches(model: OneEncoder, records: Sequence[Record], modalities: Sequence[str],
                   roots: Sequence[str | os.PathLike[str]], precision: str,
                   video_backend: str = "decord") -> dict[str, ServedFeatures]:
    """Per modality of `modalities` whose every item in `records` (an image's plain view, each
    caption) the feature caches `<root>/<modality>` hold together, as the model's encoder makes it in
    `precision` from these very files: those items, each from the first cache that holds it. `roots`
    are stages' `feature_cache` folders (every split is cached, the test split too): the frozen
    encoders' work, done once by the stages' cache builds, is read back instead of done again. A
    modality they do not cover is encoded, with the reason printed."""
    served = {}
    for modality in modalities:
        having = [r for r in records if modality in r.fields]
        folders = [Path(root) / modality for root in roots if (Path(root) / modality / HEADER_NAME).is_file()]
        if not having or not folders:  # before signing any file: without caches, nothing to compare
            continue
        readable = signable(having, modality)  # a record a build skipped as bad is in no cache
        items = sources(readable, modality, signature_memo(folders[0]))
        owners: dict[str, FeatureCache] = {}
        refused = []
        for folder in folders:
            try:
                cache = FeatureCache(folder)
                cache.check_encoder(model.encoders[modality], video_backend, precision)
            except StaleCacheError as error:
                refused.append(error.reason)
                continue
            for key in cache.served(items):
                owners.setdefault(key, cache)
        if len(owners) < len(items) or len(readable) < len(having):
            print(f"evaluation: {modality} encoded: the caches in {', '.join(map(str, folders))} hold {len(owners)}"
                  f" of its {len(items)} items as they are now" + "".join(f"; {reason}" for reason in refused))
            continue
        print(f"evaluation: {modality} features of {len(items)} items read from"
              f" {', '.join(str(c.folder) for c in dict.fromkeys(owners.values()))}")
        served[modality] = ServedFeatures(owners)
    return served


def pair_result(query: str, gallery: str, a: Embedded, b: Embedded, ks: Sequence[int]) -> PairResult:
    """Retrieval of `gallery` items by `query` items, on the records both modalities have."""
    shared = torch.tensor(sorted(set(a.owners.tolist()) & set(b.owners.tolist())))
    keep_a, keep_b = torch.isin(a.owners, shared), torch.isin(b.owners, shared)
    owners_a, owners_b = a.owners[keep_a], b.owners[keep_b]
    ranks = first_relevant_ranks(a.embeddings[keep_a], owners_a, b.embeddings[keep_b], owners_b)
    chance = chance_levels(relevant_counts(owners_a, owners_b).tolist(), len(owners_b), ks)
    return PairResult(query, gallery, recall_at_k(ranks, ks), chance, len(owners_a), len(owners_b))


def class_embeddings(model: OneEncoder, classes: Sequence[str], templates: Sequence[str], batch_size: int = 64,
                     precision: str = FP32) -> Tensor:
    """(classes, d): each class's prompts embedded as text (in `precision`), averaged into its prototype in fp32."""
    prompts = class_prompts(classes, templates)
    with autocast(precision, next(model.parameters()).device):
        embedded = model.embed("text", prompts, batch_size=batch_size)
    return class_prototypes(embedded.float(), len(classes))


def zero_shot_result(modality: str, embedded: Embedded, labels: Sequence[str | None], classes: Sequence[str],
                     prototypes: Tensor, templates: int) -> ZeroShotResult | None:
    """Accuracy@k of the nearest class prompt for the rows whose record has a label; None if none has."""
    rows = torch.tensor([i for i, owner in enumerate(embedded.owners.tolist()) if labels[owner] is not None])
    if len(rows) == 0:
        return None
    index = {name: i for i, name in enumerate(classes)}
    targets = torch.tensor([index[labels[owner]] for owner in embedded.owners[rows].tolist()])
    ks = accuracy_ks(len(classes))
    return ZeroShotResult(modality, accuracy_at_k(embedded.embeddings[rows], targets, prototypes, ks),
                          chance_accuracy(ks, len(classes)), majority_share(targets), len(targets), len(classes),
                          templates)


def _classes(records: Sequence[Record], classes: Sequence[str] | None, manifest: str) -> list[str]:
    labels = [r.fields.get("label") for r in records]
    if classes is None:
        return sorted({label for label in labels if label is not None})
    unknown = [(r.where(), label) for r, label in zip(records, labels) if label is not None and label not in classes]
    if unknown:
        where, label = unknown[0]
        raise ValueError(
            f"{where}: label {label!r} is not among the classes {list(classes)} ({len(unknown)} such records"
            f" in {manifest}); add it to the classes or leave `classes` unset to use the manifest's labels"
        )
    return list(classes)


def evaluate(
    model: OneEncoder,
    manifest: str,
    split: str = "test",
    modalities: Sequence[str] | None = None,
    ks: Sequence[int] = (1, 5, 10),
    batch_size: int = 64,
    num_workers: int = 0,
    video_backend: str = "decord",
    templates: Sequence[str] = ("{}",),
    classes: Sequence[str] | None = None,
    skip_bad_records: bool = False,
    max_image_pixels: int | None = DEFAULT_MAX_PIXELS,
    where: Mapping[str, str] | None = None,
    precision: str = FP32,
    feature_caches: Sequence[str | os.PathLike[str]] = (),
) -> Evaluation:
    """Every ordered pair of `modalities` (default: all the model's that the manifest has) that some
    records share; then zero-shot classification of the labelled records' non-text items among
    `classes` (default: the split's labels), each prompt made from `templates`. With
    `skip_bad_records`, a media file that is missing or does not decode leaves its record out of the
    pairs and classes that need it, instead of failing. A mixture of experts' mean router weights per
    modality (over the items embedded for retrieval) go to `routing`. With `where`, only the records
    whose fields equal all its values are evaluated (split_records). `precision` (32-true or
    bf16-mixed) is what the encoders and the model embed in; rankings are computed in fp32.
    `feature_caches`: stages' feature cache folders to read the frozen features from where they serve
    (serving_caches)."""
    records = split_records(manifest, split, where)
    present = [m for m in (modalities or model.modalities) if any(m in r.fields for r in records)]
    missing = sorted(set(modalities or ()) - set(present))
    if missing:
        raise ValueError(f"{manifest} has no {split!r} records with {missing}")
    caches = serving_caches(model, records, present, feature_caches, precision, video_backend)
    embedded = {m: embed_split(model, records, m, f"{manifest} ({split!r} split)", batch_size, num_workers,
                               video_backend, skip_bad_records, max_image_pixels, precision, caches.get(m))
                for m in present}
    evaluation = Evaluation(str(manifest), split, where=dict(where) if where else None, precision=precision)
    evaluation.routing = {m: e.routing.mean(0).tolist() for m, e in embedded.items() if e.routing is not None}
    for a, b in itertools.permutations(present, 2):
        if any(a in r.fields and b in r.fields for r in records):
            evaluation.results.append(pair_result(a, b, embedded[a], embedded[b], ks))
        elif a < b:
            evaluation.unpaired.append(f"{a}-{b}")
    labels = [r.fields.get("label") for r in records]
    evaluation.report_data = ReportData([record_name(r) for r in records], labels,
                                        {m: e.embeddings for m, e in embedded.items()},
                                        {m: e.owners for m, e in embedded.items()})
    names = _classes(records, classes, str(manifest))
    if names:
        prototypes = class_embeddings(model, names, templates, batch_size, precision)
        check_finite(prototypes, "text (class prompt)")
        evaluation.report_data.classes, evaluation.report_data.prototypes = list(names), prototypes
        for m in present:
            result = None if m == "text" else zero_shot_result(m, embedded[m], labels, names, prototypes, len(templates))
            if result is not None:
                evaluation.zero_shot.append(result)
    return evaluation


def record_name(record: Record) -> str:
    """A record as a figure labels it: its first caption, else its id."""
    text = record.fields.get("text")
    caption = text[0] if isinstance(text, list) and text else text
    return caption if isinstance(caption, str) and caption.strip() else record.id


def split_records(manifest: str, split: str, where: Mapping[str, str] | None = None) -> list[Record]:
    """The manifest's records of `split` whose fields equal every value of `where` (a manifest that
    draws the same concepts in several styles is evaluated one style at a time: {"style": "openmoji"});
    none is an error."""
    records = [r for r in read_manifest(manifest) if r.split == split]
    if not records:
        raise ValueError(f"{manifest} has no {split!r} records to evaluate; choose another split with --split")
    chosen = [r for r in records if all(r.fields.get(key) == value for key, value in (where or {}).items())]
    if not chosen:
        raise ValueError(f"{manifest}: none of its {len(records)} {split!r} records has {where_text(where)};"
                         " check the filter (`where`, --where) against the records' fields")
    return chosen


def check_media(records: Sequence[Record], modalities: Sequence[str]) -> None:
    """Every file the records name for `modalities` exists: a stat each, so that a missing one is
    reported before the model loads rather than after minutes of embedding."""
    for record in records:
        try:
            record.check(tuple(m for m in modalities if m in record.fields))
        except BadRecordError as error:
            raise BadRecordError(f"{error}: fix the path or remove the record, or set skip_bad_records"
                                 " (`oneencoder evaluate --skip_bad_records true`) to leave such records out") from None


def evaluate_folder(folder: str | os.PathLike[str], manifest: str, split: str = "test", by: str | None = None,
                    precision: str = FP32, **options: Any) -> Evaluation | StyleEvaluation:
    """`evaluate` for a stage's output folder, on the GPU when there is one, embedding in `precision`
    (auto: bf16-mixed where the device runs bf16 fast, as training's `auto`); with `by`, per value of
    that record field and across them instead (stages/style_eval.py). The manifest is read first, and
    unless `skip_bad_records` its media checked, so that a mistake there is reported before the model
    loads."""
    from .style_eval import MODALITIES, evaluate_styles

    records = split_records(manifest, split, options.get("where"))
    if not options.get("skip_bad_records"):
        modalities = MODALITIES if by else options.get("modalities") or list(read_config(Path(folder)).encoders)
        check_media(records, modalities)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if precision == AUTO:
        choice = choose_precision(device.type)
        print(f"evaluation precision auto: {choice.precision} ({choice.reason})")
        precision = choice.precision
    precision = resolve_precision(precision, device)  # refuses a setting that is none of the three
    model = OneEncoder.from_pretrained(folder).to(device)
    if by is None:
        return evaluate(model, manifest, split, precision=precision, **options)
    return evaluate_styles(model, manifest, split, by, precision=precision, **options)
