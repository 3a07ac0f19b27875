"""Lightning's Trainer with one more precision, `auto` (oneencoder/precision.py): bf16-mixed where this
machine runs bf16 fast, 32-true elsewhere. The choice is printed and written to the stage's folder
(`<default_root_dir>/precision.json`), so that a run's figures can be traced to the precision that
made them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch import Trainer
from lightning.pytorch.trainer.connectors.accelerator_connector import _PRECISION_INPUT

from oneencoder.files import atomic_write_text
from oneencoder.precision import AUTO, PRECISION_RECORD, choose_precision


class OneEncoderTrainer(Trainer):
    def __init__(self, *args: Any, precision: _PRECISION_INPUT | Literal["auto"] | None = None, **kwargs: Any) -> None:
        accelerator = kwargs.get("accelerator", "auto")
        choice = choose_precision(accelerator if isinstance(accelerator, str) else None) if precision == AUTO else None
        super().__init__(*args, precision=choice.precision if choice else precision, **kwargs)
        if choice is not None and self.is_global_zero:
            print(f"precision auto: {choice.precision} ({choice.reason})")
            folder = Path(self.default_root_dir)
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(folder / PRECISION_RECORD, json.dumps(
                {"requested": AUTO, "precision": choice.precision, "reason": choice.reason}, indent=2))
