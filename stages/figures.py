"""The report's figures, each drawn from plain data (results.json dicts, saved embeddings, logged
scalars) and returned with the values it plots, so that what a figure shows can be checked against
the numbers it came from rather than its pixels.

Every figure is 8 inches wide (800 px at 100 dpi: a README's width), uses the Okabe-Ito and
Tableau colour-blind palettes, and draws chance wherever it plots a metric. matplotlib's object API
(no pyplot): no global state, no display needed.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from .report_data import ReportData

WIDTH = 8.0  # inches
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
# Tableau's colour-blind-safe ten, for labels (matplotlib's "tableau-colorblind10" style)
COLORBLIND10 = ("#006BA4", "#FF800E", "#ABABAB", "#595959", "#5F9ED1", "#C85200", "#898989", "#A2C8EC",
                "#FFBC79", "#CFCFCF")
OTHER = "#DDDDDD"  # labels past the palette's ten
MODALITY_COLORS = {"image": OKABE_ITO[0], "text": OKABE_ITO[1], "audio": OKABE_ITO[2], "video": OKABE_ITO[3]}
MAX_POINTS = 2000  # the joint space's t-SNE input, records sampled to stay under it
LINKED_RECORDS = 8  # records whose items the joint space joins with lines
SIMILARITY_RECORDS = 20


@dataclass
class Plot:
    """A figure, its file stem, one line saying what it shows, and the values it plots."""

    name: str
    caption: str
    data: dict[str, Any]
    figure: Figure


def modality_color(modality: str, modalities: Sequence[str]) -> str:
    if modality in MODALITY_COLORS:
        return MODALITY_COLORS[modality]
    others = [m for m in modalities if m not in MODALITY_COLORS]
    return OKABE_ITO[4 + others.index(modality) % 4]


def _figure(height: float) -> Figure:
    return Figure(figsize=(WIDTH, height), layout="constrained")


def recall_chart(results: Mapping[str, Any], ks: Sequence[str] | None = None) -> Plot | None:
    """R@k per directed pair as grouped bars, chance as a black tick over each bar; pairs never
    trained together (transitive) hatched and named so."""
    metrics, chance = results["metrics"], results["chance"]
    pairs = list(dict.fromkeys(key.rsplit("/", 1)[0] for key in metrics))
    ks = list(ks or [k for k in dict.fromkeys(key.rsplit("/", 1)[1] for key in metrics) if k.startswith("R@")])
    if not pairs or not ks:  # an evaluation of zero-shot classification only
        return None
    trained = {frozenset(pair) for pair in results.get("trained_pairs", [])} if "trained_pairs" in results else None
    rows = {}
    for pair in pairs:
        query, gallery = pair.split("->")
        rows[pair] = {"transitive": trained is not None and frozenset((query, gallery)) not in trained,
                      **{k: metrics[f"{pair}/{k}"] for k in ks}, "chance": {k: chance[f"{pair}/{k}"] for k in ks}}
    figure = _figure(4.2)
    ax = figure.add_subplot()
    width = 0.8 / len(ks)
    for j, k in enumerate(ks):
        xs = np.arange(len(pairs)) + (j - (len(ks) - 1) / 2) * width
        for x, pair in zip(xs, pairs):
            row = rows[pair]
            ax.bar(x, row[k], width * 0.92, color=OKABE_ITO[j % len(OKABE_ITO)], hatch="//" if row["transitive"] else None,
                   edgecolor="white", label=k if pair == pairs[0] else None)
            ax.hlines(row["chance"][k], x - width / 2, x + width / 2, colors="black", linewidth=1.5,
                      label="chance" if (j, pair) == (0, pairs[0]) else None)
    ax.set_xticks(np.arange(len(pairs)),
                  [f"{p}\n(transitive)" if rows[p]["transitive"] else p for p in pairs], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("recall")
    ax.legend(ncols=len(ks) + 1, fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"Retrieval, split {results.get('split', '')}: R@k per query -> gallery (hatched: never trained together)",
                 fontsize=10)
    return Plot("recall", "R@k for every directed pair, chance as a black tick; hatched pairs were never trained"
                " together (transitive alignment)", {"pairs": rows}, figure)


def style_chart(results: Mapping[str, Any], pair: str = "text->image", k: str = "R@10") -> Plot | None:
    """A per-style evaluation's (stages/style_eval.py) `pair` R@k per style, held-out styles hatched."""
    metrics, chance = results["metrics"], results["chance"]
    styles = [s for s in results["styles"] if f"{s}/{pair}/{k}" in metrics]
    if not styles:
        return None
    held_out = set(results.get("held_out", []))
    rows = {s: {k: metrics[f"{s}/{pair}/{k}"], "chance": chance[f"{s}/{pair}/{k}"], "held_out": s in held_out}
            for s in styles}
    figure = _figure(3.8)
    ax = figure.add_subplot()
    for x, style in enumerate(styles):
        row = rows[style]
        ax.bar(x, row[k], 0.7, color=OKABE_ITO[4] if row["held_out"] else OKABE_ITO[0],
               hatch="//" if row["held_out"] else None, edgecolor="white")
        ax.hlines(row["chance"], x - 0.35, x + 0.35, colors="black", linewidth=1.5)
    ax.set_xticks(range(len(styles)), [f"{s}\n(held out)" if rows[s]["held_out"] else s for s in styles],
                  rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel(k)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"{pair} {k} per {results.get('by', 'style')} (black: chance; hatched: never trained on)", fontsize=10)
    return Plot("within", f"{pair} {k} within each {results.get('by', 'style')}, chance as a black tick; hatched"
                " styles are held out of training", {"pair": pair, "metric": k, "styles": rows}, figure)


def _sampled_records(data: ReportData, seed: int, limit: int) -> list[int]:
    """Records to place in the joint space: all, or a seeded sample whose items number at most `limit`."""
    per_record = np.zeros(len(data.names), dtype=np.int64)
    for owners in data.owners.values():
        np.add.at(per_record, owners.numpy(), 1)
    present = np.flatnonzero(per_record)
    if per_record.sum() <= limit:
        return present.tolist()
    order = np.random.default_rng(seed).permutation(present)
    keep = order[np.cumsum(per_record[order]) <= limit]
    return sorted(keep.tolist())


def tsne_2d(points: np.ndarray, seed: int) -> np.ndarray:
    """scikit-learn's t-SNE (cosine, PCA start, seeded); perplexity shrinks for tiny sets."""
    from sklearn.manifold import TSNE

    if len(points) < 3:  # t-SNE needs perplexity < points; two points lie on a line anyway
        return np.stack([np.arange(len(points), dtype=np.float32), np.zeros(len(points), dtype=np.float32)], 1)
    perplexity = min(30.0, (len(points) - 1) / 3)
    return TSNE(2, perplexity=perplexity, init="pca", metric="cosine", random_state=seed).fit_transform(points)


def joint_space(data: ReportData, seed: int = 0, limit: int = MAX_POINTS) -> Plot:
    """The test items of every modality in one t-SNE map: left coloured by modality, a few records'
    items joined by lines; right coloured by label (the ten commonest; the rest grey)."""
    keep = _sampled_records(data, seed, limit)
    kept = torch.zeros(len(data.names), dtype=torch.bool)
    kept[keep] = True
    modalities = list(data.embeddings)
    rows = {m: kept[data.owners[m]] for m in modalities}
    points = np.concatenate([data.embeddings[m][rows[m]].numpy() for m in modalities])
    owners = np.concatenate([data.owners[m][rows[m]].numpy() for m in modalities])
    of = np.concatenate([[m] * int(rows[m].sum()) for m in modalities])
    xy = tsne_2d(points, seed)
    counts = Counter(owners.tolist())
    linked = sorted((o for o, c in counts.items() if c > 1), key=lambda o: (-counts[o], o))
    linked = sorted(np.random.default_rng(seed).permutation(linked[: 4 * LINKED_RECORDS])[:LINKED_RECORDS].tolist())
    labels = [data.labels[o] for o in owners.tolist()]
    common = [label for label, _ in sorted(Counter(label for label in labels if label is not None).items(),
                                           key=lambda item: (-item[1], item[0]))[: len(COLORBLIND10)]]
    figure = _figure(4.6)
    by_modality, by_label = figure.subplots(1, 2)
    for owner in linked:
        at = np.flatnonzero(owners == owner)
        first = [at[of[at] == m][0] for m in modalities if (of[at] == m).any()]
        by_modality.plot(xy[first, 0], xy[first, 1], color="#555555", linewidth=0.8, zorder=3)
    for m in modalities:
        at = of == m
        by_modality.scatter(xy[at, 0], xy[at, 1], s=5, alpha=0.7, color=modality_color(m, modalities), label=m, zorder=2)
    by_modality.legend(fontsize=8, markerscale=2.5)
    by_modality.set_title("by modality (lines join one record's items)", fontsize=9)
    colours = {label: COLORBLIND10[i] for i, label in enumerate(common)}
    point_colours = [colours.get(label, OTHER) for label in labels]
    by_label.scatter(xy[:, 0], xy[:, 1], s=5, alpha=0.8, c=point_colours)
    for label in common:
        by_label.scatter([], [], s=12, color=colours[label], label=label)
    if common:
        by_label.legend(fontsize=6, markerscale=1.5, loc="best")
    by_label.set_title("by label" if common else "by label (the records have none)", fontsize=9)
    for ax in (by_modality, by_label):
        ax.set_xticks([])
        ax.set_yticks([])
    figure.suptitle("The joint space: test items of every modality, t-SNE", fontsize=10)
    return Plot("joint-space", "every modality's test items in one 2-D t-SNE map, by modality (lines join one"
                " record's items) and by label",
                {"points": xy.round(4).tolist(), "modalities": of.tolist(), "records": owners.tolist(),
                 "linked": linked, "labels": common}, figure)


def similarity_matrix(data: ReportData, seed: int = 0, records: int = SIMILARITY_RECORDS) -> Plot:
    """Cosine similarity between the items of `records` test records that have the most modalities,
    one item per record and modality, in blocks by modality: each off-diagonal block's diagonal is
    the matching pairs."""
    modalities = list(data.embeddings)
    first = {m: {} for m in modalities}  # record -> its first row, per modality
    for m in modalities:
        for row, owner in enumerate(data.owners[m].tolist()):
            first[m].setdefault(owner, row)
    have = Counter(owner for m in modalities for owner in first[m])
    most = max(have.values())
    candidates = sorted(owner for owner, n in have.items() if n == most)
    chosen = sorted(np.random.default_rng(seed).permutation(candidates)[:records].tolist())
    present = [m for m in modalities if all(owner in first[m] for owner in chosen)]
    items = torch.stack([data.embeddings[m][first[m][owner]] for m in present for owner in chosen])
    similarity = (items @ items.T).numpy()
    np.fill_diagonal(similarity, np.nan)  # an item with itself (1) would set the colour scale
    n = len(chosen)
    figure = _figure(7.4)
    ax = figure.add_subplot()
    image = ax.imshow(similarity, cmap="viridis")
    figure.colorbar(image, ax=ax, shrink=0.8, label="cosine similarity")
    for b in range(1, len(present)):
        ax.axhline(b * n - 0.5, color="white", linewidth=1)
        ax.axvline(b * n - 0.5, color="white", linewidth=1)
    names = [_short(data.names[owner]) for owner in chosen]
    ax.set_yticks(range(len(present) * n), [f"{m[:1]}: {name}" for m in present for name in names], fontsize=5)
    ax.set_xticks([b * n + (n - 1) / 2 for b in range(len(present))], present, fontsize=8)
    ax.set_title(f"Similarity of {n} test records' items, by modality (diagonals of the blocks: matching pairs)",
                 fontsize=9)
    return Plot("similarity", f"cosine similarity between {n} test records' items in every modality they all have;"
                " within each block, the diagonal is the matching pairs",
                {"modalities": present, "records": chosen, "names": [data.names[o] for o in chosen],
                 "similarity": [[None if np.isnan(v) else round(float(v), 4) for v in row] for row in similarity]},
                figure)


def _short(name: str, length: int = 28) -> str:
    return name if len(name) <= length else name[: length - 1] + "…"


def confusion_matrices(data: ReportData) -> Plot | None:
    """Zero-shot confusion per classified modality: rows the true class, columns the predicted one,
    each row as shares of its class; accuracy@1 in the title."""
    modalities = [m for m in data.embeddings if m != "text"]
    if data.prototypes is None or not modalities:
        return None
    classes = len(data.classes)
    matrices = {}
    for m in modalities:
        targets, predicted = data.predictions(m)
        if len(targets):
            counts = torch.zeros(classes, classes, dtype=torch.long)
            counts.index_put_((targets, predicted), torch.ones_like(targets), accumulate=True)
            matrices[m] = counts
    if not matrices:
        return None
    figure = _figure(WIDTH / len(matrices) * 0.95 + 1.2)
    axes = np.atleast_1d(figure.subplots(1, len(matrices)))
    data_out = {}
    for ax, (m, counts) in zip(axes, matrices.items()):
        shares = (counts / counts.sum(1, keepdim=True).clamp(min=1)).numpy()
        accuracy = float(counts.diagonal().sum() / counts.sum())
        ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        ax.set_title(f"{m}: acc@1 {accuracy:.3f} (chance {1 / classes:.3f})", fontsize=8)
        ticks = [_short(name, 16) for name in data.classes]
        ax.set_xticks(range(classes), ticks, rotation=90, fontsize=5)
        ax.set_yticks(range(classes), ticks if ax is axes[0] else [""] * classes, fontsize=5)
        ax.set_xlabel("predicted", fontsize=7)
        data_out[m] = {"counts": counts.tolist(), "accuracy": accuracy}
    axes[0].set_ylabel("true class", fontsize=7)
    return Plot("zero-shot", "zero-shot confusion per modality: rows the true class, columns the nearest class"
                " prompt, each row as shares of its class", {"classes": data.classes, "modalities": data_out}, figure)


def training_curves(stage: str, scalars: Mapping[str, Sequence[tuple[int, float]]]) -> Plot | None:
    """A stage's logged losses (train and validation) and validation R@1 per pair over steps; a
    codebook's perplexity (how many codes it effectively uses) when logged."""
    losses = {tag: v for tag, v in scalars.items() if tag.endswith("loss") and tag.split("/")[0] in ("train", "val")}
    recalls = {tag: v for tag, v in scalars.items() if tag.startswith("val/") and tag.endswith("/R@1")}
    usage = {tag: v for tag, v in scalars.items() if "perplexity" in tag}
    panels = [(title, series) for title, series in (("loss", losses), ("validation R@1", recalls),
                                                    ("codebook perplexity", usage)) if series]
    if not panels:
        return None
    figure = _figure(3.4)
    axes = np.atleast_1d(figure.subplots(1, len(panels)))
    for ax, (title, series) in zip(axes, panels):
        for i, (tag, points) in enumerate(sorted(series.items())):
            steps, values = zip(*points)
            many = len(points) > 20
            ax.plot(steps, values, color=OKABE_ITO[i % len(OKABE_ITO)], linewidth=0.8 if many else 1.5,
                    marker=None if many else "o", markersize=3, label=tag)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    figure.suptitle(f"Training of stage {stage}", fontsize=10)
    return Plot(f"training-{stage}", f"stage {stage}: losses and validation R@1 over training steps",
                {title: {tag: [list(p) for p in points] for tag, points in series.items()} for title, series in panels},
                figure)


def forgetting_plot(table: Mapping[str, Any], chance: Mapping[str, float], metric: str = "R@10") -> Plot | None:
    """Each trained pair's `metric` after the stage that first trained it and after every later one
    (stages/forgetting.py's table): flat lines are pairs that later stages left alone. `chance`: the
    final results' chance levels (`image->text/R@10`), drawn dotted in each pair's colour."""
    stages, pairs = table["stages"], table["pairs"]
    series = {name: {s: v for s, v in row[metric].items() if v is not None} for name, row in pairs.items()
              if metric in row}
    series = {name: points for name, points in series.items() if points}
    if not series:
        return None
    figure = _figure(3.6)
    ax = figure.add_subplot()
    markers = itertools.cycle("osD^v<>p")
    for i, (name, points) in enumerate(series.items()):
        colour = OKABE_ITO[i % len(OKABE_ITO)]
        ax.plot([stages.index(s) for s in points], list(points.values()), marker=next(markers), color=colour, label=name)
        if f"{name}/{metric}" in chance:
            ax.axhline(chance[f"{name}/{metric}"], color=colour, linestyle=":", linewidth=1)
    ax.set_xticks(range(len(stages)), stages)
    ax.set_xlabel("after stage")
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncols=2)
    ax.set_title(f"Forgetting: each trained pair's {metric} after every later stage (dotted: chance)", fontsize=10)
    return Plot("forgetting", f"each trained pair's {metric} after each stage from the one that first trained it:"
                " a flat line is a pair later stages left alone", {"stages": stages, "metric": metric, "pairs": series,
                                                                   "chance": {n: chance.get(f"{n}/{metric}") for n in series}},
                figure)


def router_weights(routing: Mapping[str, Sequence[float]]) -> Plot:
    """A mixture of experts' mean router weight per modality (rows) and expert (columns)."""
    modalities = list(routing)
    experts = max(len(w) for w in routing.values())
    weights = np.array([list(routing[m]) + [np.nan] * (experts - len(routing[m])) for m in modalities])
    figure = _figure(1.2 + 0.45 * len(modalities))
    ax = figure.add_subplot()
    image = ax.imshow(weights, cmap="cividis", vmin=0, vmax=1, aspect="auto")
    for (r, c), value in np.ndenumerate(weights):
        if not np.isnan(value):
            ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=8, color="white" if value < 0.5 else "black")
    ax.set_xticks(range(experts), [f"expert {k + 1}" for k in range(experts)], fontsize=8)
    ax.set_yticks(range(len(modalities)), modalities, fontsize=8)
    figure.colorbar(image, ax=ax, label="mean weight")
    ax.set_title("Router: each modality's mean weight per projection expert (test items)", fontsize=10)
    return Plot("router", "each modality's mean router weight per projection expert over the test items",
                {"routing": {m: list(map(float, w)) for m, w in routing.items()}}, figure)


def codebook_usage(stage: str, counts: torch.Tensor) -> Plot:
    """A codebook's codes by their EMA usage count (the codebook's own `ema_count`), commonest first,
    with the perplexity (how many codes it effectively uses) and the codes that carry 90% of the use."""
    share = (counts.double().clamp(min=0) / counts.double().clamp(min=0).sum()).sort(descending=True).values
    entropy = -(share[share > 0] * share[share > 0].log()).sum()
    perplexity = float(entropy.exp())
    ninety = int((share.cumsum(0) < 0.9).sum()) + 1
    figure = _figure(3.2)
    ax = figure.add_subplot()
    ax.bar(np.arange(len(share)), share.numpy(), width=1.0, color=OKABE_ITO[0])
    ax.axhline(1 / len(share), color="black", linewidth=1, label=f"uniform (1/{len(share)})")
    ax.set_yscale("log")
    ax.set_xlabel("code, commonest first")
    ax.set_ylabel("share of use (EMA)")
    ax.legend(fontsize=8)
    ax.set_title(f"Codebook of stage {stage}: perplexity {perplexity:.1f} of {len(share)} codes;"
                 f" {ninety} codes carry 90% of the use", fontsize=9)
    return Plot(f"codebook-{stage}", f"stage {stage}: share of use per code (EMA counts), commonest first",
                {"share": share.float().tolist(), "perplexity": perplexity, "codes_for_90_percent": ninety}, figure)
