"""The codebook stage (arXiv 2403.05168): every modality quantised in one shared codebook, trained
with FCID -- fine audio-visual alignment per time step first, coarse alignment with text joining
later -- on the frozen features of an earlier OneEncoder model.

Per modality m a generic encoder (exported) and a specific encoder (training only) read each time
step; a decoder rebuilds the step from both (reconstruction), CLUB keeps the two apart, and the
generic steps' mean, through a linear layer, is quantised in the shared codebook (commitment,
cross-modal EMA update and code matching, see oneencoder/codebook.py). The fine level is cross-modal
CPC between the `fine_modalities`' generic steps; the coarse level is InfoNCE between each other
modality's coarse vector (the one the codebook quantises) and text's, weighted `weights.coarse` from epoch `coarse_from_epoch` on
(the released code's 0.3 from the fourth epoch). With every FCID weight at 0 what is left is a plain
shared VQ: reconstruction, commitment and code matching.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from lightning import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from oneencoder import ContrastiveLoss, OneEncoder
from oneencoder.codebook import CodebookConfig
from oneencoder.codebook_model import CodebookModel, CodebookModelConfig, mlp
from oneencoder.encoders import FrozenEncoder
from oneencoder.freezing import count_parameters
from oneencoder.seeding import epoch_seed

from .fcid import Club, CrossCPC

log = logging.getLogger(__name__)


@dataclass
class LossWeights:
    """How much each term counts. fine: cross-modal CPC; club: the generic/specific MI bound;
    reconstruction: the decoders'; coarse: InfoNCE with text (from `coarse_from_epoch`). Commitment
    and code matching are weighted in the codebook's own config."""

    fine: float = 1.0
    club: float = 1.0
    reconstruction: float = 1.0
    coarse: float = 0.3


class CodebookStage(LightningModule):
    """Loads `previous` (a OneEncoder folder; frozen) and trains a CodebookModel plus FCID's
    training-only networks on records holding every one of `modalities`.

    Under DDP use `strategy: ddp_find_unused_parameters_true`: CLUB's estimators take their own
    backward pass inside each step, the coarse level's loss joins only from `coarse_from_epoch`, and
    the cut CLUB bound gives no gradient while it is 0, so not every parameter has a gradient in
    every backward pass. The codebook's statistics are all-reduced, so every rank holds the same codes.

    `val/loss` is the objective at its final weights (the coarse terms counted from the first epoch)
    without the CLUB bound, whose value moves with its own estimator's fit: so epochs before and after
    the coarse level joins compare, and the export keeps the best.
    """

    def __init__(
        self,
        previous: str,
        inputs: str = "encoder",
        modalities: Sequence[str] = ("audio", "video", "text"),
        fine_modalities: Sequence[str] = ("audio", "video"),
        steps: int = 8,
        hidden_dim: int = 512,
        codebook: CodebookConfig | None = None,
        weights: LossWeights | None = None,
        coarse_from_epoch: int = 3,
        anchor: str = "text",
        fine_offsets: Sequence[int] = (0, 1),
        club_steps: int = 5,
        club_lr: float = 1e-4,
        temperature: float = 0.07,
        gradient_clip: float | None = 0.5,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False  # CLUB's estimators step on their own optimiser
        config = CodebookModelConfig(list(modalities), list(fine_modalities), inputs, steps, hidden_dim,
                                     codebook or CodebookConfig())
        if len(config.fine_modalities) not in (0, 2):
            raise ValueError(f"the fine level aligns two modalities per time step (got {config.fine_modalities});"
                             " list two, or none to turn it off")
        if anchor not in config.modalities:
            raise ValueError(f"anchor {anchor!r} is not among modalities {config.modalities}")
        self.model = CodebookModel(OneEncoder.from_pretrained(previous), config)
        self.weights = weights or LossWeights()
        self.coarse_from_epoch = coarse_from_epoch
        self.anchor = anchor
        self.club_steps = club_steps
        self.club_lr = club_lr
        self.gradient_clip = gradient_clip
        self.optimizer = optimizer
        self.scheduler = scheduler
        dim = config.codebook.dim
        self.specific = nn.ModuleDict({m: mlp(self.model.input_dim(m), hidden_dim, dim) for m in config.modalities})
        self.decoders = nn.ModuleDict({m: mlp(2 * dim, hidden_dim, self.model.input_dim(m)) for m in config.modalities})
        self.clubs = nn.ModuleDict({m: Club(dim, dim, hidden_dim) for m in config.modalities})
        fine = tuple(config.fine_modalities)
        self.cpc = CrossCPC(fine, dim, hidden_dim, tuple(fine_offsets)) if len(fine) == 2 else None  # type: ignore[arg-type]
        self.coarse_loss = ContrastiveLoss(log_logit_scale=math.log(1 / temperature))
        self.train()

    @property
    def encoders(self) -> dict[str, FrozenEncoder]:
        return self.model.base.encoders

    def on_fit_start(self) -> None:
        trainable = count_parameters(self, trainable_only=True)
        log.info("trainable parameters: %d of %d", trainable, count_parameters(self))

    def on_train_epoch_start(self) -> None:
        torch.manual_seed(epoch_seed(self.current_epoch, "model", self.global_rank))

    # --- the objective ------------------------------------------------------------------------------

    def _forward(self, batch: dict[str, Any]) -> dict[str, dict[str, Tensor]]:
        """Per modality its step inputs, generic and specific steps and coarse vector (first `size`
        rows: one caption per record, so the rows of every modality are paired)."""
        size = batch["size"]
        out: dict[str, dict[str, Tensor]] = {"inputs": {}, "generic": {}, "specific": {}, "coarse": {}}
        for m in self.model.config.modalities:
            encoded = self.model.base.encode(m, batch["inputs"][m])
            steps = self.model.step_inputs(m, encoded.features[:size], encoded.mask[:size])
            out["inputs"][m] = steps
            out["generic"][m] = self.model.generic_steps(m, steps)
            out["specific"][m] = self.specific[m](steps)
            out["coarse"][m] = self.model.coarse_vector(m, out["generic"][m])
        return out

    def _losses(self, out: dict[str, dict[str, Tensor]], coarse_weight: float) -> tuple[Tensor, dict[str, Tensor]]:
        modalities = self.model.config.modalities
        quantized = self.model.codebook(out["coarse"])
        terms: dict[str, Tensor] = {"commitment": quantized.commitment, "matching": quantized.matching}
        terms["reconstruction"] = torch.stack([
            F.mse_loss(self.decoders[m](torch.cat([out["generic"][m], out["specific"][m]], -1)), out["inputs"][m])
            for m in modalities
        ]).sum()
        total = terms["commitment"] + terms["matching"] + self.weights.reconstruction * terms["reconstruction"]
        if self.weights.club > 0:
            terms["club"] = torch.stack([
                self.clubs[m](out["generic"][m].flatten(0, 1), out["specific"][m].flatten(0, 1)) for m in modalities
            ]).sum()
            total = total + self.weights.club * terms["club"]
        if self.cpc is not None and self.weights.fine > 0:
            terms["fine"] = self.cpc(out["generic"])
            total = total + self.weights.fine * terms["fine"]
        if coarse_weight > 0:  # on the vectors the codebook quantises: while codes are shared, quantised ones tie
            anchor = F.normalize(out["coarse"][self.anchor], dim=-1)
            terms["coarse"] = torch.stack([
                self.coarse_loss(F.normalize(out["coarse"][m], dim=-1), anchor)["loss"]
                for m in modalities if m != self.anchor
            ]).sum()
            total = total + coarse_weight * terms["coarse"]
        usage = [self.model.codebook.usage(quantized.indices[m]).perplexity for m in modalities]
        terms["perplexity"] = total.new_tensor(sum(usage) / len(usage))  # on the loss's device, for sync_dist
        return total, terms

    def _fit_clubs(self, out: dict[str, dict[str, Tensor]]) -> Tensor:
        """CLUB's estimators fitted to the current generic/specific pairs (detached), on their own optimiser."""
        optimizer = self.optimizers()[1]
        likelihood = torch.zeros(())
        for _ in range(self.club_steps):
            likelihood = torch.stack([
                self.clubs[m].log_likelihood(out["generic"][m].detach().flatten(0, 1),
                                             out["specific"][m].detach().flatten(0, 1))
                for m in self.model.config.modalities
            ]).sum()
            optimizer.zero_grad()
            self.manual_backward(-likelihood)
            optimizer.step()
        return likelihood.detach()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        if batch["size"] < 2:
            return None  # no pairs to contrast (every record of the batch skipped)
        out = self._forward(batch)
        if self.weights.club > 0:
            self.log("train/club_likelihood", self._fit_clubs(out))
        coarse = self.weights.coarse if self.current_epoch >= self.coarse_from_epoch else 0.0
        loss, terms = self._losses(out, coarse)
        optimizer = self.optimizers()[0]
        optimizer.zero_grad()
        self.manual_backward(loss)
        if self.gradient_clip:
            self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip, gradient_clip_algorithm="norm")
        optimizer.step()
        size = batch["size"]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        for name, value in terms.items():
            self.log(f"train/{name}", value, batch_size=size)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

    def _evaluation_step(self, batch: dict[str, Any], split: str) -> None:
        if batch["size"] < 2:
            return
        out = self._forward(batch)
        loss, terms = self._losses(out, self.weights.coarse)
        if "club" in terms:
            loss = loss - self.weights.club * terms["club"]
        size = batch["size"]
        self.log(f"{split}/loss", loss, prog_bar=True, batch_size=size, sync_dist=True)
        for name, value in terms.items():
            self.log(f"{split}/{name}", value, batch_size=size, sync_dist=True)
        if self.cpc is not None and (accuracy := self.cpc.step_accuracy(out["generic"])) is not None:
            self.log(f"{split}/fine_step_accuracy", accuracy, batch_size=size, sync_dist=True)
        indices = {m: self.model.codebook.nearest(out["coarse"][m])[0] for m in self.model.config.modalities}
        reference = indices[self.anchor]
        for m in self.model.config.modalities:
            if m != self.anchor:  # how often an item's code is its caption's: the codebook shared in practice
                self.log(f"{split}/same_code/{m}-{self.anchor}", (indices[m] == reference).float().mean(),
                         batch_size=size, sync_dist=True)

    def on_train_epoch_end(self) -> None:
        scheduler = self.lr_schedulers()
        if scheduler is None:
            return
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if "val/loss" in self.trainer.callback_metrics:
                scheduler.step(self.trainer.callback_metrics["val/loss"])
        else:
            scheduler.step()

    def configure_optimizers(self) -> Any:
        clubs = {id(p) for p in self.clubs.parameters()}
        trained = [p for p in self.parameters() if p.requires_grad and id(p) not in clubs]
        optimizer = self.optimizer(trained)
        club_optimizer = torch.optim.Adam(self.clubs.parameters(), lr=self.club_lr)
        if self.scheduler is None:
            return [optimizer, club_optimizer]
        return [optimizer, club_optimizer], [self.scheduler(optimizer)]

