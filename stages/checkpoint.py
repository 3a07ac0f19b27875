"""The Lightning checkpoints a stage resumes from: `last.ckpt` always the latest epoch, and every
checkpoint file written whole or not at all."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from oneencoder.files import atomic_write_with


class StageCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose `last.ckpt` is the latest epoch, written whole, remembering an early stop.

    Lightning 2.6 writes last.ckpt only at a step where it also wrote a top-k checkpoint: with
    `monitor` set, last.ckpt then holds the best epoch, and a resume trains every later epoch again.
    This writes it after every validation (or every training epoch, without validation). It also
    keeps in the checkpoint whether the fit had been told to stop (EarlyStopping): Lightning does
    not, so resuming an early-stopped fit would train on. The trainer gets AtomicCheckpointIO unless
    its config chose a checkpoint plugin of its own. Without `dirpath`, checkpoints go to
    `<default_root_dir>/checkpoints` (Lightning's default puts them under the logger's version
    folder, a new one per run, where a resume would not find last.ckpt): stage configs that share a
    base then need no path of their own but `default_root_dir`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._trainer: Trainer | None = None
        self._resumed_stopped = False

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = str(Path(trainer.default_root_dir) / "checkpoints")
        super().setup(trainer, pl_module, stage)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        self._trainer = trainer  # state_dict() reads `should_stop` at the moment a checkpoint is written

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self._resumed_stopped:
            trainer.should_stop = True

    # Each hook writes last.ckpt where Lightning itself would write checkpoints: at the end of the
    # training epoch when validation runs once at its end (after EarlyStopping has decided), else
    # after each validation.
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_behind(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_behind(trainer)

    def _save_last_if_behind(self, trainer: Trainer) -> None:
        # Skips when a checkpoint was written at this step already, in sanity checks and fast_dev_run.
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def state_dict(self) -> dict[str, Any]:
        stopped = self._trainer is not None and self._trainer.should_stop
        return {**super().state_dict(), "stopped": stopped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._resumed_stopped = state_dict.get("stopped", False)  # absent in checkpoints of earlier versions


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each local checkpoint to a temporary name and renames it: a full disk or a kill leaves
    the previous `last.ckpt` (or none), never a truncated one that a resume would trust."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save = super().save_checkpoint
        atomic_write_with(path, lambda tmp: save(checkpoint, tmp, storage_options))

