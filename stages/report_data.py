"""What an evaluation's figures need beyond results.json, saved beside it so that `oneencoder report`
redraws them without a model: every embedded item (per modality, its rows and the record each belongs
to), each record's name and label, and the zero-shot classes with their prototypes.

One file, `<stem>-embeddings.safetensors`: tensors `<modality>/embeddings` (float32, unit rows),
`<modality>/owners` (int64, indexes into the records) and, with zero-shot, `zero-shot/prototypes`;
the safetensors metadata `records` (JSON: [[name, label or null], ...]), `classes` and `modalities`
(JSON lists).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor

from oneencoder.files import atomic_write_with

PROTOTYPES = "zero-shot/prototypes"


@dataclass
class ReportData:
    """`embeddings[m]` (rows, d) and `owners[m]` (rows,) per modality; `names` and `labels` per record;
    `prototypes` (classes, d) for `classes`, when the records had labels."""

    names: list[str]
    labels: list[str | None]
    embeddings: dict[str, Tensor] = field(default_factory=dict)
    owners: dict[str, Tensor] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    prototypes: Tensor | None = None

    def save(self, path: str | os.PathLike[str]) -> None:
        tensors = {f"{m}/embeddings": e.float().contiguous() for m, e in self.embeddings.items()}
        tensors |= {f"{m}/owners": o.long().contiguous() for m, o in self.owners.items()}
        if self.prototypes is not None:
            tensors[PROTOTYPES] = self.prototypes.float().contiguous()
        metadata = {"records": json.dumps(list(zip(self.names, self.labels))), "classes": json.dumps(self.classes),
                    "modalities": json.dumps(list(self.embeddings))}
        atomic_write_with(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ReportData:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
        if "records" not in metadata:
            raise ValueError(f"{path}: not an evaluation's embeddings (no `records` metadata); rerun the"
                             " evaluation (`oneencoder evaluate ... --output FOLDER`) to write it again")
        tensors = load_file(str(path))
        records = json.loads(metadata["records"])
        modalities = json.loads(metadata.get("modalities", "[]"))  # in the evaluation's order, not the file's
        return cls([name for name, _ in records], [label for _, label in records],
                   {m: tensors[f"{m}/embeddings"] for m in modalities}, {m: tensors[f"{m}/owners"] for m in modalities},
                   json.loads(metadata.get("classes", "[]")), tensors.get(PROTOTYPES))

    def predictions(self, modality: str) -> tuple[Tensor, Tensor]:
        """Zero-shot: (targets, predicted) class indices for the modality's rows whose record has a
        label, the nearest prototype winning (stages/evaluate.py's accuracy@1)."""
        if self.prototypes is None:
            raise ValueError("no zero-shot classes were saved with these embeddings")
        index = {name: i for i, name in enumerate(self.classes)}
        owners = self.owners[modality].tolist()
        rows = torch.tensor([i for i, owner in enumerate(owners) if self.labels[owner] is not None], dtype=torch.long)
        targets = torch.tensor([index[self.labels[owners[i]]] for i in rows.tolist()], dtype=torch.long)
        predicted = (self.embeddings[modality][rows] @ self.prototypes.T).argsort(dim=1, descending=True)[:, 0]
        return targets, predicted


def embeddings_path(folder: str | os.PathLike[str], stem: str) -> Path:
    return Path(folder) / f"{stem}-embeddings.safetensors"
