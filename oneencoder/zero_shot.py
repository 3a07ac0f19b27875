"""Zero-shot classification maths, OneEncoder's CIFAR-10 protocol: each class name in prompt templates,
the prompts' text embeddings averaged per class into a prototype, the nearest prototype wins. Pure
tensors in and out: embedding the prompts and the items is the caller's part (stages/evaluate.py)."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import torch
from torch import Tensor
from torch.nn.functional import normalize

from .retrieval import rows_per_chunk

# Scores (float32) and their argsort (int64) per item x class cell, with room for the comparisons.
BYTES_PER_CELL = 16


def class_prompts(classes: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Every class name in every template, class-major (all of a class's templates together). Every
    `{}` of a template takes the name (OneEncoder's CIFAR-10 prompt has it twice)."""
    for template in templates:
        if "{}" not in template:
            raise ValueError(f"a prompt template needs a {{}} where the class name goes (got {template!r})")
    return [template.replace("{}", name) for name in classes for template in templates]


def class_prototypes(prompt_embeddings: Tensor, classes: int) -> Tensor:
    """(classes, d): the embeddings of `class_prompts` (classes x templates, d) averaged over the
    templates and re-normalised, so that every class competes at the same length."""
    return normalize(prompt_embeddings.float().reshape(classes, -1, prompt_embeddings.shape[-1]).mean(1), dim=-1)


def accuracy_ks(classes: int) -> list[int]:
    """The k of accuracy@k worth reporting: 1 and 5, each only below the number of classes (where
    it is not a certain hit), and 1 at least."""
    return [k for k in (1, 5) if k < classes] or [1]


def accuracy_at_k(
    embeddings: Tensor, targets: Tensor, prototypes: Tensor, ks: Sequence[int], chunk: int | None = None
) -> dict[str, float]:
    """{"acc@k": share of items whose class `targets` (items,) is among the k prototypes nearest by
    inner product}. embeddings: (items, d), prototypes: (classes, d). Items are scored `chunk` at a
    time (default: as many as fit in retrieval.MEMORY_BUDGET), so memory does not grow with
    items x classes. Ties among classes fall as argsort leaves them."""
    chunk = chunk or rows_per_chunk(len(prototypes), BYTES_PER_CELL)
    hits: dict[int, list[Tensor]] = {k: [] for k in ks}
    for start in range(0, len(embeddings), chunk):
        ranking = (embeddings[start : start + chunk] @ prototypes.T).argsort(dim=1, descending=True)
        target = targets[start : start + chunk, None]
        for k in ks:
            hits[k].append((ranking[:, :k] == target).any(1))
    return {f"acc@{k}": torch.cat(hits[k]).float().mean().item() for k in ks}


def chance_accuracy(ks: Sequence[int], classes: int) -> dict[str, float]:
    """What guessing a class at random scores: k / classes."""
    return {f"acc@{k}": k / classes for k in ks}


def majority_share(targets: Tensor) -> float:
    """The accuracy of always answering the most frequent class: the floor a classifier must beat
    on an unbalanced set, where chance (1 / classes) is too low a bar."""
    return Counter(targets.tolist()).most_common(1)[0][1] / len(targets)
