"""Contrastive training on pairs of modalities: what every stage shares (a loss and retrieval metrics
per pair, logging, one way of choosing what trains, the optimizer over it, reproducible epochs)."""

from __future__ import annotations

import copy
import logging
from typing import Any, Sequence

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torchmetrics import MeanMetric

from oneencoder import ContrastiveLoss, OneEncoder
from oneencoder.encoders import FrozenEncoder
from oneencoder.freezing import count_parameters, frozen_to_eval, set_trainable
from oneencoder.heads import ModalityToken
from oneencoder.seeding import epoch_seed

from .retrieval_metric import PairRetrieval

log = logging.getLogger(__name__)

Pair = tuple[str, str]


def pair_key(pair: Sequence[str]) -> str:
    """"image-text": a pair's name in metric names and module dicts (which refuse dots)."""
    return "-".join(pair)


class PairStage(LightningModule):
    """Symmetric InfoNCE between the two modalities of each of `pairs`, training the parameters of
    `model` that `trainable` names (prefixes of parameter names, e.g. `up`, `heads.audio`; None:
    all of them). Everything else is frozen and kept in eval mode, so it computes exactly as it did
    when it was trained.

    Each batch holds one pair (its `modalities`): ManifestDataModule's batches all hold its one pair,
    BalancedDataModule's take turns. Every pair has its own loss (and learnable temperature) and
    retrieval metrics; `val/loss` is the mean of the pairs' validation losses. In evaluation an
    image->text hit counts when any of the image's captions is in the top K; the loss pairs each
    image with its first caption.
    """

    def __init__(
        self,
        model: OneEncoder,
        loss: ContrastiveLoss | None = None,
        pairs: Sequence[Sequence[str]] = (("image", "text"),),
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        recall_ks: tuple[int, ...] = (1, 5, 10),
        trainable: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "loss"])
        self.model = model
        self.pairs: tuple[Pair, ...] = tuple((a, b) for a, b in pairs)
        if not self.pairs or len(set(self.pairs)) != len(self.pairs):
            raise ValueError(f"`pairs` must list distinct pairs of modalities (got {list(pairs)})")
        missing = sorted({m for pair in self.pairs for m in pair} - set(model.modalities))
        if missing:
            raise ValueError(f"pairs name modalities the model does not have: {missing}; it has {model.modalities}")
        loss = loss if loss is not None else ContrastiveLoss()
        self.losses = nn.ModuleDict({pair_key(p): copy.deepcopy(loss) for p in self.pairs})
        self.val_retrieval = nn.ModuleDict({pair_key(p): PairRetrieval(p, recall_ks) for p in self.pairs})
        self.test_retrieval = nn.ModuleDict({pair_key(p): PairRetrieval(p, recall_ks) for p in self.pairs})
        self.val_losses = nn.ModuleDict({pair_key(p): MeanMetric() for p in self.pairs})
        self.test_losses = nn.ModuleDict({pair_key(p): MeanMetric() for p in self.pairs})
        self.optimizer = optimizer
        self.scheduler = scheduler
        if trainable is not None:
            set_trainable(self.model, trainable)
        # Lightning 2.6 keeps the modes modules have (a loaded model is in eval mode): trainable parts
        # train with dropout from the first step, frozen ones never do.
        self.train()

    @property
    def encoders(self) -> dict[str, FrozenEncoder]:
        return self.model.encoders

    def train(self, mode: bool = True) -> PairStage:
        super().train(mode)
        frozen_to_eval(self.model)  # Lightning switches everything to train mode at each epoch
        return self

    def on_fit_start(self) -> None:
        trainable = count_parameters(self, trainable_only=True)
        log.info("trainable parameters: %d of %d", trainable, count_parameters(self))
        if self.logger is not None:
            self.logger.log_metrics({"trainable_parameters": float(trainable)}, step=0)

    def on_train_epoch_start(self) -> None:
        # Dropout draws from (seed, epoch, rank), so a run resumed at this epoch repeats an
        # uninterrupted one exactly (the data module keys its own draws by epoch the same way).
        torch.manual_seed(epoch_seed(self.current_epoch, "model", self.global_rank))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checkpoints written before stages had a loss per pair kept it under `loss.`."""
        state = checkpoint["state_dict"]
        if len(self.pairs) == 1:
            prefix = f"losses.{pair_key(self.pairs[0])}."
            for key in [k for k in state if k.startswith("loss.")]:
                state[prefix + key.removeprefix("loss.")] = state.pop(key)

    def _pair(self, batch: dict[str, Any]) -> Pair:
        pair = tuple(batch["modalities"])
        if pair not in self.pairs:
            raise ValueError(
                f"a batch holds the pair {pair} but this stage trains {list(self.pairs)}: the data module's"
                " modalities (or sources) must be the stage's pairs"
            )
        return pair  # type: ignore[return-value]

    def _embed(self, batch: dict[str, Any], pair: Pair) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
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
        return {m: empty for m in pair}, {m: owners for m in pair}

    def _pair_loss(self, pair: Pair, embeddings: dict[str, torch.Tensor], size: int) -> dict[str, torch.Tensor]:
        # Rows [0, size) are the pairs; extra caption rows only take part in retrieval.
        a, b = (embeddings[m][:size] for m in pair)
        return self.losses[pair_key(pair)](a, b)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self.log("data/skipped", float(batch["num_skipped"]), reduce_fx="sum", on_step=False, on_epoch=True,
                 sync_dist=True)  # summed over every rank's batches, not rank 0's alone
        pair = self._pair(batch)
        hooks = self._watch_routers(pair)
        try:
            embeddings, _ = self._embed(batch, pair)
        finally:
            for hook in hooks:
                hook.remove()
        terms = self._pair_loss(pair, embeddings, batch["size"])
        key = pair_key(pair)
        self.log("train/loss", terms["loss"], prog_bar=True, batch_size=batch["size"])
        if len(self.pairs) > 1:
            self.log(f"train/{key}/loss", terms["loss"], batch_size=batch["size"])
        self.log(f"train/{key}/logit_scale" if len(self.pairs) > 1 else "train/logit_scale", terms["logit_scale"],
                 batch_size=batch["size"])
        return terms["loss"]

    def _watch_routers(self, pair: Pair) -> list[torch.utils.hooks.RemovableHandle]:
        """On logging steps, hooks that send each modality's per-token router weights to TensorBoard
        as one histogram per expert: how the experts share the work, while it is learnt."""
        routers = getattr(self.model.up, "routers", None)
        logger = self.logger
        if routers is None or not isinstance(logger, TensorBoardLogger) or self.global_step % self.trainer.log_every_n_steps:
            return []

        def histogram(modality: str) -> Any:
            def hook(module: nn.Module, inputs: Any, weights: torch.Tensor) -> None:
                flat = weights.detach().float().reshape(-1, weights.shape[-1]).cpu()
                for expert in range(flat.shape[1]):
                    logger.experiment.add_histogram(f"router/{modality}/expert{expert}", flat[:, expert], self.global_step)
            return hook

        return [routers[m].register_forward_hook(histogram(m)) for m in pair if m in routers]

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        for loss in self.losses.values():
            loss.clamp_()  # after the optimiser step, as CLIP caps its scale

    def _evaluation_step(self, batch: dict[str, Any], metrics: nn.ModuleDict, losses: nn.ModuleDict) -> None:
        pair = self._pair(batch)
        embeddings, owners = self._embed(batch, pair)
        terms = self._pair_loss(pair, embeddings, batch["size"])
        a, b = pair
        metrics[pair_key(pair)].update(embeddings[a], owners[a], embeddings[b], owners[b])
        # An all-skipped batch still updates (with weight 0), so that every rank syncs every pair's mean.
        value = terms["loss"].detach() if batch["size"] else torch.zeros((), device=self.device)
        losses[pair_key(pair)].update(value, weight=batch["size"])

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluation_step(batch, self.val_retrieval, self.val_losses)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluation_step(batch, self.test_retrieval, self.test_losses)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val", self.val_retrieval, self.val_losses)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test", self.test_retrieval, self.test_losses)

    def _log_epoch(self, split: str, metrics: nn.ModuleDict, losses: nn.ModuleDict) -> None:
        """Each pair's loss (batch-size weighted over every rank's batches) and retrieval, and
        `<split>/loss`: the mean over the pairs, which early stopping and the export monitor."""
        means = []
        for key, mean in losses.items():
            if not mean.update_called:
                continue  # no batch of this pair in this loop (a rank that has none still updates)
            value = mean.compute()  # synced over ranks by torchmetrics: the same on every rank
            mean.reset()
            if torch.isnan(value):
                continue  # every batch of the pair was skipped
            means.append(value)
            if len(self.pairs) > 1:
                self.log(f"{split}/{key}/loss", value, sync_dist=True)
        if means:
            self.log(f"{split}/loss", torch.stack(means).mean(), prog_bar=True, sync_dist=True)
        for metric in metrics.values():
            if not metric.update_called:
                continue
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
