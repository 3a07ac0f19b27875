"""Write the stage's output folder: model.safetensors + config.json (the best model so far by the
monitored metric) and metrics.json (with the stage's trainable parameter count, which the runner
reports per stage), so the folder alone rebuilds the model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from oneencoder.files import atomic_write_text
from oneencoder.freezing import count_parameters


class ExportPretrained(Callback):
    """After each validation that improves `monitor`, save `pl_module.model` with `save_pretrained`.

    Without validation (no val split, or `limit_val_batches=0`) the final weights are saved at the
    end of fit. `dirpath` defaults to the trainer's `default_root_dir`. The best value and whether
    anything was exported go into the checkpoint: a fit resumed after its best epoch then leaves the
    best model in place instead of exporting its last weights at the end.
    """

    def __init__(self, dirpath: str | None = None, monitor: str = "val/loss", mode: str = "min") -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max' (got {mode!r})")
        self.dirpath = dirpath
        self.monitor = monitor
        self.mode = mode
        self.best = math.inf if mode == "min" else -math.inf
        self.exported = False

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "exported": self.exported}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict["best"]
        # Checkpoints from before "exported" was kept: a best value was only ever set by an export.
        self.exported = state_dict.get("exported", math.isfinite(self.best))

    def folder(self, trainer: Trainer) -> Path:
        return Path(self.dirpath or trainer.default_root_dir)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        improved = value < self.best if self.mode == "min" else value > self.best
        if improved:
            self.best = value
            self._export(trainer, pl_module)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.exported:
            self._export(trainer, pl_module)

    def _export(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.exported = True
        if not trainer.is_global_zero:
            return
        folder = self.folder(trainer)
        pl_module.model.save_pretrained(folder)
        metrics = {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if v.numel() == 1}
        payload = {"epoch": trainer.current_epoch, "global_step": trainer.global_step, "monitor": self.monitor,
                   "metrics": metrics, "trainable_parameters": count_parameters(pl_module, trainable_only=True)}
        atomic_write_text(folder / "metrics.json", json.dumps(payload, indent=2))
