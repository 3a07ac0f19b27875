"""What a stage leaves on disk survives kills and resumes: the exported model stays the best epoch's,
last.ckpt is the latest epoch, and a checkpoint is never half-written under its final name."""

import errno
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import tiny_model_config
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import EarlyStopping
from safetensors.torch import load_file
from torch.utils.data import DataLoader, TensorDataset

from oneencoder import OneEncoder
from stages import ExportPretrained
from stages.checkpoint import AtomicCheckpointIO, StageCheckpoint

ROOT = Path(__file__).resolve().parents[1]
# val/loss by epoch: the best is epoch 2; with patience 2, EarlyStopping stops after epoch 4.
VAL_LOSSES = [3.0, 2.0, 1.0, 1.5, 1.7, 1.9, 2.1, 2.3]
BEST_EPOCH = 2


class Scripted(LightningModule):
    """A tiny OneEncoder whose weights change every step (weight decay by gradient) and whose
    val/loss follows VAL_LOSSES, so that which epoch got exported can be read off the weights."""

    def __init__(self) -> None:
        super().__init__()
        self.model = OneEncoder(tiny_model_config())

    def training_step(self, batch, batch_idx):
        return sum(p.square().sum() for p in self.model.parameters() if p.requires_grad) * batch[0].mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", VAL_LOSSES[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=1e-2)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.rand(8, 1) + 0.5), batch_size=4)

    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(2, 1)), batch_size=2)


class Killed(Exception):
    pass


class KillAtEpoch(Callback):
    """Stands in for a kill: the run dies as `epoch` starts, after the epoch before was checkpointed."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise Killed


def _fit(root, epochs=6, resume=False, early_stopping=False, kill_at=None):
    seed_everything(0)
    callbacks = [StageCheckpoint(dirpath=root / "checkpoints", monitor="val/loss", save_last=True,
                                 enable_version_counter=False),
                 ExportPretrained(dirpath=str(root), monitor="val/loss")]
    if early_stopping:
        callbacks.append(EarlyStopping(monitor="val/loss", patience=2))
    if kill_at is not None:
        callbacks.append(KillAtEpoch(kill_at))
    trainer = Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=str(root), callbacks=callbacks)
    trainer.fit(Scripted(), ckpt_path=str(root / "checkpoints/last.ckpt") if resume else None)
    return trainer


def _exported(root):
    return load_file(str(root / "model.safetensors")), json.loads((root / "metrics.json").read_text())


def _checkpoint(root):
    return torch.load(root / "checkpoints/last.ckpt", weights_only=True)


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("uninterrupted")
    _fit(root)
    return root


def test_a_fit_killed_after_its_best_epoch_resumes_to_the_uninterrupted_result(uninterrupted, tmp_path):
    with pytest.raises(Killed):
        _fit(tmp_path, kill_at=4)
    assert _checkpoint(tmp_path)["epoch"] == 3  # the latest epoch, not the best one
    _fit(tmp_path, resume=True)
    (weights, metrics), (reference, expected) = _exported(tmp_path), _exported(uninterrupted)
    print("exported epoch after resuming:", metrics["epoch"], "uninterrupted:", expected["epoch"])
    assert metrics == expected and metrics["epoch"] == BEST_EPOCH
    assert _same(weights, reference)
    assert _same(_checkpoint(tmp_path)["state_dict"], _checkpoint(uninterrupted)["state_dict"])


def test_resuming_a_finished_fit_leaves_the_best_export(uninterrupted):
    reference, expected = _exported(uninterrupted)
    _fit(uninterrupted, resume=True)  # `make up` run a second time: fit --ckpt_path last
    weights, metrics = _exported(uninterrupted)
    assert metrics == expected and metrics["epoch"] == BEST_EPOCH
    assert _same(weights, reference)


def test_resuming_an_early_stopped_fit_trains_nothing_more(tmp_path):
    stopped = _fit(tmp_path, epochs=8, early_stopping=True)
    assert stopped.current_epoch == 5 and _checkpoint(tmp_path)["epoch"] == 4
    reference, expected = _exported(tmp_path)
    # Lightning itself does not keep `should_stop`: its resume trains epoch 5 before stopping again.
    resumed = _fit(tmp_path, epochs=8, early_stopping=True, resume=True)
    assert resumed.global_step == stopped.global_step
    weights, metrics = _exported(tmp_path)
    assert metrics == expected and _same(weights, reference)


def test_a_checkpoint_write_that_fails_leaves_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 1}, path)

    def disk_full(checkpoint, filepath):
        with open(filepath, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("lightning.fabric.plugins.io.torch_io._atomic_save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"epoch": 2}, path)
    assert io.load_checkpoint(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_stage_checkpoint_writes_through_the_atomic_plugin(tmp_path):
    trainer = _fit(tmp_path, epochs=1)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_up_evaluates_the_exported_model_not_the_last_checkpoint():
    recipe = subprocess.run(["make", "-n", "up"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    after_fit = recipe[recipe.index("fit --config configs/up.yaml"):]
    assert "evaluate outputs/up data/shapes/manifest.jsonl" in after_fit and "last.ckpt" not in after_fit


def test_the_export_records_how_many_parameters_trained(tmp_path):
    """metrics.json counts the trainable parameters only: the runner's per-stage cost figure."""
    from types import SimpleNamespace

    stage = Scripted()
    stage.model.up.requires_grad_(False)
    trainer = SimpleNamespace(is_global_zero=True, default_root_dir=str(tmp_path), callback_metrics={},
                              current_epoch=0, global_step=0)
    ExportPretrained()._export(trainer, stage)
    counted = json.loads((tmp_path / "metrics.json").read_text())["trainable_parameters"]
    frozen = sum(p.numel() for p in stage.model.up.parameters())
    assert frozen > 0 and counted == sum(p.numel() for p in stage.parameters()) - frozen
