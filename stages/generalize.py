"""Cross-modal generalisation of a frozen codebook, the CMG paper's protocol: a classifier trained on
one modality's quantised features is tested on another modality's, on held-out data. If the codebook
puts both modalities' events on the same codes, what a classifier learnt from audio carries over to
video.

For every ordered pair (source, target) of modalities, a linear classifier and the paper's small MLP
(Linear -> ReLU -> Dropout -> Linear) are trained on the source's train split, the epoch kept is the
best on the source's val split (early stopping), and they are tested on the target's test split. Beside
each figure: chance (1 / classes), the majority class (the source train split's most frequent class,
scored on the target's test split), the same-modality control (source -> source test) and the
continuous baseline (the same classifiers on the pre-quantisation vectors). Codebook usage per
modality on the test split: the perplexity of code use and the dead codes (never used there).

Only `fit_classifier` trains, and it receives only the source's train and val splits: no target
modality and no test data reach a classifier before it is tested (tests spy on it to hold this).
Classes are the source train split's labels; a test row whose label that split lacks counts as wrong
(the number of such rows is reported). Everything runs on the CPU, seeded, without touching the global
random state: the same features and seed give the same figures.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.nn.functional import cross_entropy

from oneencoder.codebook import CodeUsage, code_usage
from oneencoder.files import atomic_write_text

from .markdown import table

SPLITS = ("train", "val", "test")
CLASSIFIERS = ("linear", "mlp")
KINDS = ("quantized", "continuous")  # the codebook's vectors; the pre-quantisation baseline
NAMES = {"linear": "linear", "mlp": "MLP"}


@dataclass
class SplitFeatures:
    """One modality on one split, a row per record."""

    quantized: Tensor  # (N, D) what the classifier sees (already TOC-sliced when TOC is on)
    continuous: Tensor  # (N, D') the pre-quantisation vectors (the continuous baseline)
    indices: Tensor  # (N, ...) code indices, any shape (a fine level gives several per record)
    labels: list[str]  # N class names

    def __post_init__(self) -> None:
        rows = {"quantized": len(self.quantized), "continuous": len(self.continuous), "labels": len(self.labels)}
        if len(set(rows.values())) != 1 or self.quantized.ndim != 2 or self.continuous.ndim != 2:
            raise ValueError(f"SplitFeatures needs (N, D) quantized and continuous and N labels, got rows {rows},"
                             f" shapes {tuple(self.quantized.shape)} and {tuple(self.continuous.shape)}")


Features = dict[str, dict[str, SplitFeatures]]  # {modality: {"train" | "val" | "test": SplitFeatures}}


@dataclass
class TrainingConfig:
    """How each classifier is trained: minibatch Adam on standardised features, early stopping on val."""

    hidden: int = 256
    dropout: float = 0.1
    linear_learning_rate: float = 1e-2  # a linear probe starts from small logits: it needs bigger steps
    mlp_learning_rate: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    max_epochs: int = 100
    patience: int = 10  # epochs without a better val accuracy before stopping; the epoch kept is the best
    # by val accuracy, ties going to the lower val loss
    seed: int = 0


@dataclass
class FittedClassifier:
    """A classifier with the train split's standardisation; `epoch` and `val_accuracy` say what was kept."""

    classes: list[str]
    mean: Tensor
    scale: Tensor
    network: nn.Module
    epoch: int
    val_accuracy: float

    @torch.no_grad()
    def predict(self, features: Tensor) -> list[str]:
        self.network.eval()
        logits = self.network((features.float() - self.mean) / self.scale)
        return [self.classes[i] for i in logits.argmax(dim=1).tolist()]

    def accuracy(self, features: Tensor, labels: Sequence[str]) -> float:
        """A label outside `classes` can never be predicted, so its row counts as wrong."""
        predicted = self.predict(features)
        return sum(p == y for p, y in zip(predicted, labels)) / max(len(labels), 1)


def _network(architecture: str, inputs: int, classes: int, config: TrainingConfig) -> nn.Module:
    if architecture == "linear":
        return nn.Linear(inputs, classes)
    if architecture == "mlp":
        return nn.Sequential(nn.Linear(inputs, config.hidden), nn.ReLU(), nn.Dropout(config.dropout),
                             nn.Linear(config.hidden, classes))
    raise ValueError(f"unknown classifier {architecture!r}; choose from {list(CLASSIFIERS)}")


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Classifiers this small train many times faster on one thread: several threads spend their time
    waiting on each other, far worse when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def fit_classifier(architecture: str, kind: str, train: SplitFeatures, val: SplitFeatures,
                   config: TrainingConfig) -> FittedClassifier:
    """Train on `train`'s `kind` features, keep the epoch best on `val`: the only place that trains,
    and all it is given is one modality's train and val splits."""
    classes = sorted(set(train.labels))
    position = {name: i for i, name in enumerate(classes)}
    x = getattr(train, kind).float()
    y = torch.tensor([position[name] for name in train.labels])
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    scale = torch.where(std > 1e-8, std, torch.ones_like(std))  # a constant dimension is left as it is
    x = (x - mean) / scale
    val_x = (getattr(val, kind).float() - mean) / scale
    val_y = torch.tensor([position.get(name, -1) for name in val.labels])
    known = val_y >= 0  # val rows of a class train lacks: wrong whatever the model says, no loss
    with torch.random.fork_rng(devices=[]), _one_thread():
        torch.manual_seed(config.seed)
        network = _network(architecture, x.shape[1], len(classes), config)
        learning_rate = config.linear_learning_rate if architecture == "linear" else config.mlp_learning_rate
        optimizer = torch.optim.Adam(network.parameters(), lr=learning_rate, weight_decay=config.weight_decay)
        order = torch.Generator().manual_seed(config.seed)
        best: tuple[float, float] | None = None
        best_state, best_epoch, best_accuracy, waited = None, 0, -1.0, 0
        for epoch in range(config.max_epochs):
            network.train()
            for rows in torch.randperm(len(x), generator=order).split(config.batch_size):
                optimizer.zero_grad()
                cross_entropy(network(x[rows]), y[rows]).backward()
                optimizer.step()
            network.eval()
            with torch.no_grad():
                logits = network(val_x)
            accuracy = (logits.argmax(dim=1) == val_y).float().mean().item()
            loss = cross_entropy(logits[known], val_y[known]).item() if known.any() else 0.0
            if best is None or (accuracy, -loss) > best:
                best, best_epoch = (accuracy, -loss), epoch
                best_state = {k: v.clone() for k, v in network.state_dict().items()}
            waited = 0 if accuracy > best_accuracy else waited + 1
            best_accuracy = max(best_accuracy, accuracy)
            if waited >= config.patience:
                break
    network.load_state_dict(best_state)
    network.eval()
    return FittedClassifier(classes, mean, scale, network, best_epoch, best[0])


@dataclass
class PairAccuracy:
    """Classifiers trained on `source`, tested on `target`'s test split (source == target: the control)."""

    source: str
    target: str
    accuracy: dict[str, dict[str, float]]  # {kind: {classifier: accuracy}}
    chance: float  # 1 / the source train split's classes
    majority: float  # the source train split's most frequent class, on the target's test split
    test_rows: int
    unseen: int  # target test rows whose label the source train split lacks (always wrong)

    @property
    def name(self) -> str:
        return f"{self.source}->{self.target}"


def majority_accuracy(train_labels: Sequence[str], test_labels: Sequence[str]) -> float:
    """Always answering train's most frequent class (ties: the first name in sorted order)."""
    counts = Counter(train_labels)
    majority = min(counts, key=lambda name: (-counts[name], name))
    return sum(label == majority for label in test_labels) / max(len(test_labels), 1)


@dataclass
class GeneralizationResult:
    """Every ordered pair's accuracies (controls included), codebook usage per modality, and what was kept."""

    pairs: dict[str, PairAccuracy]  # "audio->video", ..., and the controls "audio->audio", ...
    usage: dict[str, CodeUsage]
    selection: dict[str, dict[str, float]] = field(default_factory=dict)  # "audio/quantized/mlp": epoch, val acc
    config: TrainingConfig = field(default_factory=TrainingConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"pairs": {name: asdict(pair) for name, pair in self.pairs.items()},
                "usage": {modality: asdict(usage) for modality, usage in self.usage.items()},
                "selection": self.selection, "training": asdict(self.config)}

    def markdown(self) -> str:
        kinds = [k for k in KINDS if any(k in p.accuracy for p in self.pairs.values())]
        columns = ["train -> test", "classifier", *kinds, "chance", "majority class", "test rows"]
        rows = []
        for pair in self.pairs.values():
            label = pair.name + (" (same modality)" if pair.source == pair.target else "")
            for classifier in _classifiers(self):
                rows.append([label, NAMES[classifier], *(_cell(pair, kind, classifier) for kind in kinds),
                             f"{pair.chance:.3f}", f"{pair.majority:.3f}", str(pair.test_rows)])
        return "\n".join(["Cross-modal generalisation: trained on one modality's train split (epoch chosen on"
                          " its val split), tested on the other's test split", "", *table(columns, rows), "",
                          *_usage_lines({"": self}, labelled=False), *_unseen_lines(self)]) + "\n"


def _classifiers(result: GeneralizationResult) -> list[str]:
    return [c for c in CLASSIFIERS if any(c in acc for p in result.pairs.values() for acc in p.accuracy.values())]


def _cell(pair: PairAccuracy, kind: str, classifier: str) -> str:
    value = pair.accuracy.get(kind, {}).get(classifier)
    return "–" if value is None else f"{value:.3f}"


def _check(features: Features, kinds: Sequence[str], classifiers: Sequence[str]) -> None:
    if len(features) < 2:
        raise ValueError(f"cross-modal generalisation needs two or more modalities, got {list(features)}")
    for modality, splits in features.items():
        missing = [s for s in SPLITS if s not in splits or not splits[s].labels]
        if missing:
            raise ValueError(f"{modality} has no labelled {' or '.join(missing)} records: the evaluation needs"
                             f" train, val and test records with a `label` for every modality")
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"unknown feature kind {kind!r}; choose from {list(KINDS)}")
        widths = {m: getattr(s[split], kind).shape[1] for m, s in features.items() for split in SPLITS}
        if len(set(widths.values())) != 1:
            raise ValueError(f"{kind} features must have one width across modalities and splits, got {widths}")
    for classifier in classifiers:
        if classifier not in CLASSIFIERS:
            raise ValueError(f"unknown classifier {classifier!r}; choose from {list(CLASSIFIERS)}")


def cross_modal_generalization(features: Features, codes: int, classifiers: Sequence[str] = CLASSIFIERS,
                               seed: int = 0, kinds: Sequence[str] = KINDS,
                               config: TrainingConfig | None = None) -> GeneralizationResult:
    """Train once per (source, kind, classifier) on the source's train split (selected on its val
    split), then test that classifier on every modality's test split, its own being the control."""
    _check(features, kinds, classifiers)
    config = TrainingConfig(**{**asdict(config or TrainingConfig()), "seed": seed})
    modalities = list(features)
    pairs: dict[str, PairAccuracy] = {}
    selection: dict[str, dict[str, float]] = {}
    for source in modalities:
        train, val = features[source]["train"], features[source]["val"]
        fitted = {(kind, c): fit_classifier(c, kind, train, val, config) for kind in kinds for c in classifiers}
        for (kind, c), classifier in fitted.items():
            selection[f"{source}/{kind}/{c}"] = {"epoch": classifier.epoch, "val_accuracy": classifier.val_accuracy}
        classes = set(train.labels)
        for target in [source] + [m for m in modalities if m != source]:
            test = features[target]["test"]
            accuracy = {kind: {c: fitted[kind, c].accuracy(getattr(test, kind), test.labels) for c in classifiers}
                        for kind in kinds}
            pair = PairAccuracy(source, target, accuracy, 1 / len(classes), majority_accuracy(train.labels, test.labels),
                                len(test.labels), sum(label not in classes for label in test.labels))
            pairs[pair.name] = pair
    usage = {m: code_usage(features[m]["test"].indices, codes) for m in modalities}
    return GeneralizationResult(pairs, usage, selection, config)


def select_dimensions(features: Features, dimensions: Sequence[int]) -> Features:
    """The same features with only `dimensions` of the quantised vectors (TOC), the rest as they are."""
    keep = torch.as_tensor(list(dimensions), dtype=torch.long)
    return {m: {s: SplitFeatures(f.quantized[:, keep], f.continuous, f.indices, f.labels) for s, f in splits.items()}
            for m, splits in features.items()}


def _baselines_agree(rows: dict[str, GeneralizationResult]) -> None:
    first_name, first = next(iter(rows.items()))
    for name, result in rows.items():
        same = result.pairs.keys() == first.pairs.keys() and all(
            math.isclose(p.chance, first.pairs[k].chance) and math.isclose(p.majority, first.pairs[k].majority)
            for k, p in result.pairs.items())
        if not same:
            raise ValueError(f"{name!r} and {first_name!r} were evaluated on different modalities or labels;"
                             " compare variants on the same manifest and modalities")


def generalization_table(rows: dict[str, GeneralizationResult]) -> str:
    """Model variants side by side: per ordered pair the linear and MLP accuracies, the continuous
    baseline and the same-modality control (linear / MLP in one cell), then chance and the majority
    class once, as the last two rows; then codebook usage per modality."""
    if not rows:
        raise ValueError("no results to tabulate")
    _baselines_agree(rows)
    first = next(iter(rows.values()))
    crossed = [p for p in first.pairs.values() if p.source != p.target]
    columns = ["model"]
    for p in crossed:
        columns += [f"{p.name} linear", f"{p.name} MLP", f"{p.name} continuous (linear / MLP)",
                    f"{p.source}->{p.source} control (linear / MLP)"]
    body = []
    for label, result in rows.items():
        cells = [label]
        for p in crossed:
            pair, control = result.pairs[p.name], result.pairs[f"{p.source}->{p.source}"]
            cells += [_cell(pair, "quantized", "linear"), _cell(pair, "quantized", "mlp"),
                      _both(pair, "continuous"), _both(control, "quantized")]
        body.append(cells)
    for label, value in (("chance", lambda pair: pair.chance), ("majority class", lambda pair: pair.majority)):
        cells = [label]
        for p in crossed:
            control = first.pairs[f"{p.source}->{p.source}"]
            cells += [f"{value(p):.3f}"] * 3 + [f"{value(control):.3f}"]
        body.append(cells)
    lines = ["Cross-modal generalisation: accuracy on the target's test split of classifiers trained on the"
             " source's train split (quantised features unless marked continuous)", "", *table(columns, body), "",
             *_usage_lines(rows), *_unseen_lines(first)]
    return "\n".join(lines) + "\n"


def _both(pair: PairAccuracy, kind: str) -> str:
    return f"{_cell(pair, kind, 'linear')} / {_cell(pair, kind, 'mlp')}"


def _usage_lines(rows: dict[str, GeneralizationResult], labelled: bool = True) -> list[str]:
    """Perplexity and dead codes per modality, a row per variant (`labelled`: a first column names it)."""
    modalities = list(next(iter(rows.values())).usage)
    codes = next(iter(rows.values())).usage[modalities[0]].codes
    columns = ["model"] * labelled + [f"{m} {what}" for m in modalities for what in ("perplexity", "dead codes")]
    body = [[label] * labelled + [cell for m in modalities for cell in (
        f"{result.usage[m].perplexity:.1f}", f"{result.usage[m].dead_codes} / {result.usage[m].codes}")]
        for label, result in rows.items()]
    return [f"Codebook usage on the test split ({codes} codes): perplexity of code use, codes never used", "",
            *table(columns, body)]


def _unseen_lines(result: GeneralizationResult) -> list[str]:
    unseen = [f"{p.name}: {p.unseen} of {p.test_rows}" for p in result.pairs.values() if p.unseen]
    if not unseen:
        return []
    return ["", "Test rows whose class the source's train split lacks count as wrong: " + ", ".join(unseen) + "."]


def write_generalization(rows: dict[str, GeneralizationResult], output: str | os.PathLike[str]) -> tuple[Path, Path]:
    """`<output>.json` (every variant's to_dict) and `<output>.md` (the table)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = output.with_name(output.name + ".json"), output.with_name(output.name + ".md")
    atomic_write_text(json_path, json.dumps({label: result.to_dict() for label, result in rows.items()}, indent=2))
    atomic_write_text(markdown_path, generalization_table(rows))
    return json_path, markdown_path


def toc_sweep(features: Features, codes: int, ks: Sequence[int], dimensions: Callable[[int], Sequence[int]],
              seed: int = 0, config: TrainingConfig | None = None) -> dict[str, GeneralizationResult]:
    """All dimensions (with the continuous baseline), then the `dimensions(k)` TOC keeps for each k."""
    width = next(iter(features.values()))["train"].quantized.shape[1]
    rows = {f"all {width} dimensions": cross_modal_generalization(features, codes, seed=seed, config=config)}
    for k in ks:
        rows[f"TOC k = {k}"] = cross_modal_generalization(select_dimensions(features, dimensions(k)), codes,
                                                          seed=seed, kinds=("quantized",), config=config)
    return rows
