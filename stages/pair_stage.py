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
from oneencoder.heads import ModalityToken
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

    def _embed(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Embeddings (rows, d) and owners (rows, 2) of the pair's modalities.

        A batch whose records were all skipped gives zero rows, tied to every trainable parameter by a
        zero term: under DDP this process still joins the loss's gathers, and DDP's gradient sync,
        which waits for every parameter's gradient on every process.
        """
        if batch["inputs"]:
            return self.model(batch["inputs"]), batch["owners"]
        tie = 0.0 * sum(p.sum() for p in self.parameters() if p.requires_grad)
        empty = torch.zeros(0, self.model.config.embed_dim, device=self.device) + tie
        owners = torch.zeros(0, 2, dtype=torch.long, device=self.device)
        return {m: empty for m in self.pair}, {m: owners for m in self.pair}

    def _pair_loss(self, embeddings: dict[str, torch.Tensor], size: int) -> dict[str, torch.Tensor]:
        # Rows [0, size) are the pairs; extra caption rows only take part in retrieval.
        a, b = (embeddings[m][:size] for m in self.pair)
        return self.loss(a, b)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self.log("data/skipped", float(batch["num_skipped"]), reduce_fx="sum", on_step=False, on_epoch=True,
                 sync_dist=True)  # summed over every rank's batches, not rank 0's alone
        embeddings, _ = self._embed(batch)
        terms = self._pair_loss(embeddings, batch["size"])
        self.log("train/loss", terms["loss"], prog_bar=True, batch_size=batch["size"])
        self.log("train/logit_scale", terms["logit_scale"], batch_size=batch["size"])
        return terms["loss"]

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.loss.clamp_()  # after the optimiser step, as CLIP caps its scale

    def _evaluation_step(self, batch: dict[str, Any], split: str, metric: PairRetrieval) -> None:
        embeddings, owners = self._embed(batch)
        terms = self._pair_loss(embeddings, batch["size"])
        a, b = self.pair
        metric.update(embeddings[a], owners[a], embeddings[b], owners[b])
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
        optimizer = self.optimizer(self._parameter_groups())
        if self.scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler(optimizer), "monitor": "val/loss"}}

    def _parameter_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters in two groups, as CLIP trains: matrices decay at the optimizer's
        `weight_decay`; biases, norm weights and the logit scale (ndim < 2) and the modality tokens'
        vectors (an embedding, the model's input) do not, since pulling them towards zero shifts what
        the model computes instead of regularising it."""
        tokens = {id(m.vectors) for m in self.modules() if isinstance(m, ModalityToken)}
        decay, no_decay = [], []
        for p in self.parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or id(p) in tokens else decay).append(p)
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        return [group for group in groups if group["params"]]
