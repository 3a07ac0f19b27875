"""FCID's training-only networks (arXiv 2403.05168, after CMG's released code): cross-modal
contrastive predictive coding for the fine, per-time-step level, and the CLUB estimator that keeps a
modality's generic and specific features apart. Neither is exported: they shape the generic
features, which the exported model keeps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CrossCPC(nn.Module):
    """Per modality a GRU reads the generic steps up to t; a linear predictor per offset k guesses
    the other modality's step t + k (and, with `self_weight`, the modality's own). Each prediction is
    scored against every (item, step) of the target in the batch (InfoNCE), so the right step of the
    right item must win: offset 0 is alignment at the same time step, offset 1 CPC's next step.
    """

    def __init__(self, modalities: tuple[str, str], dim: int, context_dim: int, offsets: tuple[int, ...] = (0, 1),
                 self_weight: float = 0.1, temperature: float = 0.1) -> None:
        super().__init__()
        if not offsets or min(offsets) < 0:
            raise ValueError(f"offsets must be non-negative time steps ahead (got {offsets})")
        self.modalities = modalities
        self.offsets = tuple(offsets)
        self.self_weight = self_weight
        self.temperature = temperature
        self.context = nn.ModuleDict({m: nn.GRU(dim, context_dim, batch_first=True) for m in modalities})
        self.predict = nn.ModuleDict({  # a modality's own step t is in its context: nothing to predict
            f"{source}_{target}_{k}": nn.Linear(context_dim, dim)
            for source in modalities for target in modalities for k in self.offsets if source != target or k > 0
        })

    def predictions(self, source: str, target: str, offset: int, steps: dict[str, Tensor]) -> Tensor:
        """(batch, T - offset, dim): from `source`'s context at t, `target`'s step t + offset."""
        context, _ = self.context[source](steps[source])
        length = context.shape[1] - offset
        return self.predict[f"{source}_{target}_{offset}"](context[:, :length])

    def scores(self, source: str, target: str, offset: int, steps: dict[str, Tensor]) -> Tensor:
        """(batch, T - offset, batch, T): each prediction against every (item, step) of `target`."""
        predicted = F.normalize(self.predictions(source, target, offset, steps), dim=-1)
        actual = F.normalize(steps[target], dim=-1)
        return torch.einsum("btd,csd->btcs", predicted, actual) / self.temperature

    @torch.no_grad()
    def step_accuracy(self, steps: dict[str, Tensor]) -> Tensor | None:
        """How often the same-step prediction (offset 0) picks the right step among the item's own
        T steps of the other modality, both ways: 1/T by chance, 1 when the modalities are aligned
        step by step. None without offset 0."""
        if 0 not in self.offsets:
            return None
        a, b = self.modalities
        hits = []
        for source, target in ((a, b), (b, a)):
            predicted = F.normalize(self.predictions(source, target, 0, steps), dim=-1)
            scores = torch.einsum("btd,bsd->bts", predicted, F.normalize(steps[target], dim=-1))
            hits.append(scores.argmax(-1) == torch.arange(scores.shape[1], device=scores.device))
        return torch.cat(hits).float().mean()

    def forward(self, steps: dict[str, Tensor]) -> Tensor:
        """{modality: (batch, T, dim) generic steps} -> the weighted InfoNCE loss over offsets."""
        a, b = self.modalities
        batch, length = steps[a].shape[:2]
        total, weights = steps[a].new_zeros(()), 0.0
        for offset in (k for k in self.offsets if k < length):
            span = length - offset
            targets = (torch.arange(batch, device=steps[a].device)[:, None] * length
                       + torch.arange(offset, length, device=steps[a].device)[None, :]).reshape(-1)
            for source, target in ((a, b), (b, a), (a, a), (b, b)):
                weight = 1.0 if source != target else self.self_weight
                if weight == 0 or f"{source}_{target}_{offset}" not in self.predict:
                    continue
                logits = self.scores(source, target, offset, steps).reshape(batch * span, batch * length)
                total = total + weight * F.cross_entropy(logits, targets)
                weights += weight
        return total / max(weights, 1e-12)


class Club(nn.Module):
    """CLUB (Cheng et al. 2020), the sampled upper bound of I(x; y): q(y | x) is a Gaussian whose
    mean and log-variance networks are fitted by maximum likelihood on their own optimiser; the
    bound compares paired (x_i, y_i) with shuffled (x_i, y_j)."""

    def __init__(self, x_dim: int, y_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.mean = nn.Sequential(nn.Linear(x_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, y_dim))
        self.log_variance = nn.Sequential(nn.Linear(x_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, y_dim),
                                          nn.Tanh())

    def log_likelihood(self, x: Tensor, y: Tensor) -> Tensor:
        """Mean log q(y | x) up to constants, over rows of (rows, dim): what the estimator maximises."""
        mean, log_variance = self.mean(x), self.log_variance(x)
        return (-((mean - y) ** 2) / log_variance.exp() - log_variance).sum(-1).mean() / 2

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """The mutual-information bound for (rows, dim) pairs: what the encoders minimise. Mutual
        information is never negative, so a bound below 0 measures the estimator's lag, not the
        features: it is cut at 0, or the encoders learn to fool a lagging estimator (on the demo the
        uncut bound fell to -2000 within five epochs and dragged the other terms with it)."""
        mean, log_variance = self.mean(x), self.log_variance(x)
        shuffled = y[torch.randperm(len(y), device=y.device)]
        positive = -((mean - y) ** 2) / log_variance.exp()
        negative = -((mean - shuffled) ** 2) / log_variance.exp()
        return ((positive.sum(-1) - negative.sum(-1)).mean() / 2).clamp_min(0.0)
