"""Contrastive training on pairs of two modalities: what every OneEncoder stage shares (the loss,
retrieval metrics, logging, the optimizer over whatever is trainable, reproducible epochs)."""

from __future__ import annotations

import logging
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from oneencoder import ContrastiveLoss, OneEncoder
from oneencoder.encoders import FrozenEncoder
from oneencoder.freezing import count_parameters
from oneencoder.seeding import epoch_seed

from .retrieval_metric import PairRetrieval

log = logging.getLogger(__name__)


class PairStage(LightningModule):
    """Symmetric InfoNCE between the two modalities of `pair`, training every parameter of `model`
    that requires grad (subclasses decide which do).

    Batches come from ManifestDataModule: {"inputs", "owners", "size", "num_skipped"}. In evaluation an
    image->text hit counts when any of the image's captions is in the top K; the loss pairs each
    image with its first caption.
    """

    def __init__(
        self,
        model: OneEncoder,
        loss: ContrastiveLoss | None = None,
        pair: tuple[str, str] = ("image", "text"),
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        recall_ks: tuple[int, ...] = (1, 5, 10),
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "loss"])
        self.model = model
        self.loss = loss if loss is not None else ContrastiveLoss()
        self.pair = tuple(pair)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.val_retrieval = PairRetrieval(self.pair, recall_ks)
        self.test_retrieval = PairRetrieval(self.pair, recall_ks)

    @property
    def encoders(self) -> dict[str, FrozenEncoder]:
        return self.model.encoders

    def on_fit_start(self) -> None:
        trainable = count_parameters(self, trainable_only=True)
        log.info("trainable parameters: %d of %d", trainable, count_parameters(self))
        if self.logger is not None:
            self.logger.log_metrics({"trainable_parameters": float(trainable)}, step=0)

    def on_train_epoch_start(self) -> None:
        # Dropout draws from (seed, epoch, rank), so a run resumed at this epoch repeats an
        # uninterrupted one exactly (the data module keys its own draws by epoch the same way).
        torch.manual_seed(epoch_seed(self.current_epoch, "model", self.global_rank))

    def _pair_loss(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        embeddings = self.model(batch["inputs"])
        size = batch["size"]
        # Rows [0, size) are the pairs; extra caption rows only take part in retrieval.
        a, b = (embeddings[m][:size] for m in self.pair)
        return embeddings, self.loss(a, b)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        self.log("data/skipped", float(batch["num_skipped"]), reduce_fx="sum", on_step=False, on_epoch=True,
                 sync_dist=True)  # summed over every rank's batches, not rank 0's alone
        if not batch["inputs"]:
            return None
        _, terms = self._pair_loss(batch)
        self.log("train/loss", terms["loss"], prog_bar=True, batch_size=batch["size"])
        self.log("train/logit_scale", terms["logit_scale"], batch_size=batch["size"])
        return terms["loss"]

    def _evaluation_step(self, batch: dict[str, Any], split: str, metric: PairRetrieval) -> None:
        if not batch["inputs"]:
            return
        embeddings, terms = self._pair_loss(batch)
        a, b = self.pair
        metric.update(embeddings[a], batch["owners"][a], embeddings[b], batch["owners"][b])
        self.log(f"{split}/loss", terms["loss"], prog_bar=True, sync_dist=True, batch_size=batch["size"])

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluation_step(batch, "val", self.val_retrieval)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluation_step(batch, "test", self.test_retrieval)

    def on_validation_epoch_end(self) -> None:
        self._log_retrieval("val", self.val_retrieval)

    def on_test_epoch_end(self) -> None:
        self._log_retrieval("test", self.test_retrieval)

    def _log_retrieval(self, split: str, metric: PairRetrieval) -> None:
        if not metric.update_called:
            return
        for name, value in metric.compute().items():  # computed on every rank's gathered embeddings
            self.log(f"{split}/{name}", value, prog_bar=name.endswith("R@1"), sync_dist=True)
        metric.reset()

    def configure_optimizers(self) -> Any:
        parameters = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer(parameters)
        if self.scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler(optimizer), "monitor": "val/loss"}}
