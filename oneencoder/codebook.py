"""One EMA vector-quantisation codebook shared by every modality (CMG, arXiv 2403.05168), and TOC.

Checked against the authors' release (github.com/haihuangcode/CMG, `ACL25-FCID&TOC/src/model/
main_model_2.py`, class `Cross_VQEmbeddingEMA_AVT`; TOC in `ave_fc.py::cal_criterion`). Rules kept:

- nearest code by squared Euclidean distance; straight-through output `x + (q - x).detach()`.
- Cross-modal EMA: the code that modality m's row i picks receives own_weight x m's row i plus
  other_weight x every other modality's row i (the rows are paired); its count grows by one. With three
  modalities this is the release's 0.5 / 0.25 / 0.25. Counts are Laplace smoothed
  `(c + eps) / (n + K eps) * n` and stored smoothed, as there; code = ema_weight / ema_count.
- Commitment, per modality m: `2 mse(x_m, q_m) + 0.5 sum_{o != m} mse(x_m, q_o)`, summed over modalities,
  times `commitment` (0.25).
- Code matching: per sample, p_m = softmax(-||x_m - e_k||) over codes (averaged over time steps when the
  input is (B, T, dim)); S = p_a log(p_b)^T + p_b log(p_a)^T; cross-entropy of S's rows against the
  diagonal; `matching` (0.5) x the sum over modality pairs.
- Dead codes: a code no modality picked for `dead_after` (300) training steps is reset to a code used in
  this step plus noise; TOC: score_d = -0.7 sim_d + 0.3 var_d (unbiased variance, as `torch.var`), top k.

Where this differs from the release, and why:
- One EMA step per training step over all modalities together; the release applies one step per
  modality in turn, i.e. the decay three times per batch (0.99^3) and results that depend on modality order.
- own/other weights are divided by own + (M-1) other, so each code stays a weighted mean of features for
  any number M of modalities (exactly the release's weights for M = 3; its two-modality class uses
  0.5 / 0.5, and 1.0 rather than 0.5 on the other modality's commitment).
- ema_count starts at 1 with ema_weight = the initial codes; the release starts counts at 0, so after the
  first step every unused code is divided by ~1e-5 and flies off until its dead-code reset.
- Resets really add noise (the release's `uniform_(-1/1024, -1/1024)` is a constant shift, so a reset code
  sits on top of its source) and they persist: the release overwrites only `embedding`, which the next
  EMA step recomputes from the untouched ema buffers. Here the source's EMA mass is split in half between
  the source and the reset code. Sources are drawn from the codes used in this step (the release: in the
  last 100 steps). Counters only move in training (the release also counts eval batches).
- The matching loss is `F.cross_entropy` on S (the release's exp(S - min S) with +1e-5 in the denominator
  is the same up to that epsilon, and can overflow).
- Under torch.distributed the per-step counts and feature sums are all-reduced before the EMA step, and
  rank 0's reset draws and first-step buffers are broadcast, so every rank holds identical codes (the
  release is single-GPU). The matching loss uses each rank's own batch.

Hand-written rather than `vector-quantize-pytorch`: that library has EMA, DDP codebook sync and dead-code
expiry, but not the cross-modal update, this commitment or the code-matching loss, so its EMA would have
to be bypassed and only the argmin would remain; not worth a new dependency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

OWN_COMMITMENT = 2.0    # release: commitment x (2 x own + 0.5 x each other modality)
OTHER_COMMITMENT = 0.5


@dataclass
class CodebookConfig:
    codes: int = 400
    dim: int = 256
    decay: float = 0.99
    epsilon: float = 1e-5
    own_weight: float = 0.5      # EMA: share of a code's update from its own modality's assigned features
    other_weight: float = 0.25   # ... from each other modality's features at the same (paired) rows
    commitment: float = 0.25     # x (2 x own + 0.5 x each other modality)
    matching: float = 0.5        # code-matching loss weight, x the sum over modality pairs
    dead_after: int = 300        # training steps a code may go unused before it is reset
    reset_noise: float = 0.01    # std of the reset noise, relative to the source code's RMS (must be > 0)
    init: str = "data"           # data: codes start as the first training batch's features (+ reset noise); uniform: the release's


    def __post_init__(self) -> None:
        if self.codes < 2 or self.dim < 1:
            raise ValueError(f"codebook needs codes >= 2 and dim >= 1 (got codes={self.codes}, dim={self.dim})")
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"codebook decay must be in [0, 1) (got {self.decay})")
        if self.own_weight <= 0 or self.other_weight < 0:
            raise ValueError(f"codebook own_weight must be > 0 and other_weight >= 0 "
                             f"(got {self.own_weight}, {self.other_weight})")
        if self.dead_after < 1:
            raise ValueError(f"codebook dead_after must be >= 1 step (got {self.dead_after})")
        if self.init not in ("data", "uniform"):
            raise ValueError(f"codebook init must be 'data' or 'uniform' (got {self.init!r})")
        if self.reset_noise <= 0:
            raise ValueError(f"codebook reset_noise must be > 0, or a reset code duplicates its source "
                             f"(got {self.reset_noise})")


@dataclass
class Quantized:
    indices: dict[str, Tensor]     # {modality: (...,) long}, the input's leading shape
    quantized: dict[str, Tensor]   # {modality: (..., dim)}, straight-through (x + (q - x).detach())
    commitment: Tensor             # scalar, already weighted by config.commitment
    matching: Tensor               # scalar, already weighted by config.matching (0 with one modality)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class SharedCodebook(nn.Module):
    """Codes in buffers, moved by EMA of the features that pick them, never by the optimiser."""

    def __init__(self, config: CodebookConfig) -> None:
        super().__init__()
        self.config = config
        embedding = torch.empty(config.codes, config.dim).uniform_(-1 / config.codes, 1 / config.codes)
        self.register_buffer("embedding", embedding)
        self.register_buffer("ema_count", torch.ones(config.codes))
        self.register_buffer("ema_weight", embedding.clone())
        self.register_buffer("unused_steps", torch.zeros(config.codes, dtype=torch.long))
        # In the checkpoint, so a resumed run does not start its codes again from its first batch.
        self.register_buffer("initialized", torch.tensor(config.init == "uniform"))
        self._synced = False  # every rank takes rank 0's buffers on its first training forward

    @staticmethod
    def _squared_distances(rows: Tensor, embedding: Tensor) -> Tensor:
        """(N, dim) -> (N, codes) in float32 whatever autocast says, so argmin does not flip on rounding."""
        with torch.autocast(rows.device.type, enabled=False):
            rows = rows.float()
            return ((rows * rows).sum(1, keepdim=True) - 2 * rows @ embedding.t()
                    + (embedding * embedding).sum(1)).clamp_min(0)

    def nearest(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """(..., dim) -> indices (...,), quantized vectors (..., dim); no update, no gradient tricks."""
        self._check_dim("features", features)
        rows = features.detach().reshape(-1, self.config.dim)
        indices = self._squared_distances(rows, self.embedding).argmin(1)
        return indices.view(features.shape[:-1]), self.embedding[indices].view(features.shape)

    def forward(self, features: dict[str, Tensor]) -> Quantized:
        """features: {modality: (B, dim) or (B, T, dim)}, rows paired across modalities (same shape).

        Every row is quantised; the matching loss contrasts the B samples (with (B, T, dim), each sample's
        code distribution is its mean over T, as the release does for its time steps).

        In training mode it updates the EMA (cross-modal: own_weight/other_weight) and the dead-code
        counters/resets, with the sums all-reduced under torch.distributed so every rank holds the same
        codes; in eval mode nothing changes (the losses are still computed).
        """
        if not features:
            raise ValueError("SharedCodebook got no modalities")
        names = list(features)
        shape = features[names[0]].shape
        for name in names:
            self._check_dim(name, features[name])
            if features[name].shape != shape:
                raise ValueError(f"codebook inputs must be paired rows of one shape: {names[0]} is "
                                 f"{tuple(shape)}, {name} is {tuple(features[name].shape)}")
        if self.training and not self._synced:
            self._sync()
        flat = {m: x.reshape(-1, self.config.dim) for m, x in features.items()}
        if self.training and not bool(self.initialized):
            self._initialize(torch.cat([x.detach().float() for x in flat.values()]))
        embedding = self.embedding.clone()  # the update below changes the buffer in place; autograd keeps this
        distances = {m: self._squared_distances(x, embedding) for m, x in flat.items()}  # features' gradient
        indices = {m: d.detach().argmin(1) for m, d in distances.items()}
        codes = {m: embedding[i] for m, i in indices.items()}
        commitment = self._commitment(flat, codes)
        matching = self._matching(distances, batch=shape[0] if len(shape) > 1 else 1)
        if self.training:
            self._update({m: x.detach().float() for m, x in flat.items()}, indices)
        return Quantized(
            indices={m: i.view(shape[:-1]) for m, i in indices.items()},
            quantized={m: x + (codes[m].to(x.dtype).view(shape) - x).detach() for m, x in features.items()},
            commitment=commitment,
            matching=matching,
        )

    @torch.no_grad()
    def _sync(self) -> None:
        """Every rank starts training from rank 0's buffers, whatever seed built each rank's codes."""
        if _distributed():
            for buffer in (self.embedding, self.ema_count, self.ema_weight, self.unused_steps):
                dist.broadcast(buffer, src=0)
        self._synced = True

    @torch.no_grad()
    def _initialize(self, rows: Tensor) -> None:
        """Codes drawn from the first training batch's rows, plus noise: codes that start where the
        features are, instead of the release's uniform +-1/codes, which features far from the origin
        all map to one code of (the codebook collapses before any dead-code reset can act)."""
        picked = torch.randperm(len(rows))[: self.config.codes] if len(rows) >= self.config.codes \
            else torch.randint(len(rows), (self.config.codes,))
        codes = rows[picked.to(rows.device)]
        codes = codes + self.config.reset_noise * rows.pow(2).mean().sqrt() * torch.randn_like(codes)
        if _distributed():  # rank 0's draw
            dist.broadcast(codes, src=0)
        self.embedding.copy_(codes)
        self.ema_weight.copy_(codes * self.ema_count.unsqueeze(1))
        self.initialized.fill_(True)

    def _check_dim(self, name: str, features: Tensor) -> None:
        if features.shape[-1] != self.config.dim:
            raise ValueError(f"codebook {name} features end in {features.shape[-1]}, expected codebook.dim="
                             f"{self.config.dim}")

    def _commitment(self, flat: dict[str, Tensor], codes: dict[str, Tensor]) -> Tensor:
        total = flat[next(iter(flat))].new_zeros((), dtype=torch.float32)
        for m, x in flat.items():
            for o, q in codes.items():
                weight = OWN_COMMITMENT if o == m else OTHER_COMMITMENT
                total = total + weight * F.mse_loss(x.float(), q.detach())
        return self.config.commitment * total

    def _matching(self, distances: dict[str, Tensor], batch: int) -> Tensor:
        """Contrastive over samples: paired samples should share a code distribution, others should not."""
        first = distances[next(iter(distances))]
        probs = {m: F.softmax(-d.clamp_min(1e-12).sqrt(), dim=1).view(batch, -1, self.config.codes).mean(1)
                 for m, d in distances.items()}
        targets = torch.arange(batch, device=first.device)
        total = first.new_zeros(())
        for a, b in combinations(probs, 2):
            scores = probs[a] @ torch.log(probs[b] + 1e-10).t() + probs[b] @ torch.log(probs[a] + 1e-10).t()
            total = total + F.cross_entropy(scores, targets)
        return self.config.matching * total

    @torch.no_grad()
    def _update(self, flat: dict[str, Tensor], indices: dict[str, Tensor]) -> None:
        config = self.config
        scale = config.own_weight + (len(flat) - 1) * config.other_weight
        own, other = config.own_weight / scale, config.other_weight / scale
        total = sum(flat.values())
        counts = torch.zeros_like(self.ema_count)
        sums = torch.zeros_like(self.ema_weight)
        for m, x in flat.items():
            counts += torch.bincount(indices[m], minlength=config.codes).to(counts.dtype)
            sums.index_add_(0, indices[m], (own - other) * x + other * total)
        if _distributed():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        count = config.decay * self.ema_count + (1 - config.decay) * counts
        n = count.sum()
        self.ema_count.copy_((count + config.epsilon) / (n + config.codes * config.epsilon) * n)
        self.ema_weight.mul_(config.decay).add_((1 - config.decay) * sums)
        self.embedding.copy_(self.ema_weight / self.ema_count.unsqueeze(1))
        used = counts > 0
        self.unused_steps.add_(1).masked_fill_(used, 0)
        dead = (self.unused_steps >= config.dead_after).nonzero().flatten()
        if len(dead):  # the same codes on every rank: the counters come from all-reduced counts
            self._reset(dead, used.nonzero().flatten())

    def _reset(self, dead: Tensor, used: Tensor) -> None:
        """Each dead code becomes a used code plus noise, taking half its EMA mass so the reset lasts."""
        sources = used[torch.randint(len(used), (len(dead),))].tolist()
        for code, source in zip(dead.tolist(), sources):
            base = self.embedding[source]
            std = self.config.reset_noise * base.pow(2).mean().sqrt().clamp_min(1e-12)
            self.embedding[code] = base + std * torch.randn_like(base)
            self.ema_count[source] /= 2
            self.ema_count[code] = self.ema_count[source]
            self.ema_weight[source] = self.embedding[source] * self.ema_count[source]
            self.ema_weight[code] = self.embedding[code] * self.ema_count[code]
            self.unused_steps[code] = 0
        if _distributed():  # rank 0's draws win
            for buffer in (self.embedding, self.ema_count, self.ema_weight):
                dist.broadcast(buffer, src=0)

    def usage(self, indices: Tensor) -> CodeUsage:
        return code_usage(indices, self.config.codes)


@dataclass
class CodeUsage:
    """How a set of items uses the codebook."""

    perplexity: float  # exp(entropy of code use): how many codes it effectively uses
    dead_codes: int  # codes it never uses
    codes: int


def code_usage(indices: Tensor, codes: int) -> CodeUsage:
    """Perplexity and dead codes of `indices` (any shape) among `codes` codes."""
    flat = indices.reshape(-1).long()
    if len(flat) and (flat.min() < 0 or flat.max() >= codes):
        raise ValueError(f"code indices must lie in [0, {codes}), got {flat.min().item()}..{flat.max().item()}")
    counts = torch.bincount(flat, minlength=codes).double()
    share = counts[counts > 0] / max(counts.sum().item(), 1.0)
    perplexity = math.exp(-(share * share.log()).sum().item()) if len(flat) else 0.0
    return CodeUsage(perplexity, int((counts == 0).sum()), codes)


def toc_scores(embedding: Tensor, similarity_weight: float = 0.7, variance_weight: float = 0.3) -> Tensor:
    """(codes, dim) -> (dim,): -0.7 sim_d + 0.3 var_d, sim_d = mean over i != j of E[i,d] E[j,d].

    High scores: dimensions where codes differ (low cross-code product, high variance), i.e. the ones
    that tell codes apart.
    """
    codes = embedding.shape[0]
    if embedding.dim() != 2 or codes < 2:
        raise ValueError(f"TOC needs a (codes >= 2, dim) codebook, got shape {tuple(embedding.shape)}")
    e = embedding.detach().double()
    column = e.sum(0)
    similarity = (column * column - (e * e).sum(0)) / (codes * (codes - 1))
    return (-similarity_weight * similarity + variance_weight * e.var(0)).to(embedding.dtype)


def toc_dimensions(embedding: Tensor, k: int, similarity_weight: float = 0.7,
                   variance_weight: float = 0.3) -> list[int]:
    """The k highest-scoring codebook dimensions (`toc_scores`), sorted ascending."""
    dim = embedding.shape[-1]
    if not 1 <= k <= dim:
        raise ValueError(f"TOC k must be between 1 and the codebook dim {dim} (got {k})")
    scores = toc_scores(embedding, similarity_weight, variance_weight)
    return sorted(torch.topk(scores, k).indices.tolist())
