import math
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from oneencoder import ContrastiveLoss


def reference_infonce(a, b, scale):
    """Written out per row, independent of the module's matrix form."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    n = a.shape[0]
    total = 0.0
    for i in range(n):
        row = torch.stack([scale * a[i] @ b[j] for j in range(n)])
        col = torch.stack([scale * b[i] @ a[j] for j in range(n)])
        total += -(row[i] - torch.logsumexp(row, 0)) - (col[i] - torch.logsumexp(col, 0))
    return total / (2 * n)


def _pair(n=6, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1), F.normalize(torch.randn(n, d, generator=g), dim=-1)


def test_fixed_scale_matches_reference():
    a, b = _pair()
    loss = ContrastiveLoss(log_logit_scale=2.5, learnable_scale=False)
    assert not loss.log_logit_scale.requires_grad
    torch.testing.assert_close(loss(a, b)["loss"], reference_infonce(a, b, math.exp(2.5)))


def test_learnable_scale_matches_reference_is_clamped_and_learns():
    a, b = _pair()
    loss = ContrastiveLoss.clip()
    assert loss.log_logit_scale.requires_grad
    torch.testing.assert_close(loss(a, b)["loss"], reference_infonce(a, b, 1 / 0.07))
    loss(a, b)["loss"].backward()
    assert loss.log_logit_scale.grad is not None and loss.log_logit_scale.grad != 0
    with torch.no_grad():
        loss.log_logit_scale.fill_(10.0)
    assert loss(a, b)["logit_scale"] == 100.0
    torch.testing.assert_close(loss(a, b)["loss"], reference_infonce(a, b, 100.0))


def test_identical_pairs_give_lower_loss_than_shuffled():
    a, _ = _pair(n=16, d=32)
    loss = ContrastiveLoss()
    assert loss(a, a)["loss"] < loss(a, a[torch.randperm(16)])["loss"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank, world, port, a, b, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        rows = slice(rank * len(a) // world, (rank + 1) * len(a) // world)
        local_a = a[rows].clone().requires_grad_(True)
        local_b = b[rows].clone().requires_grad_(True)
        value = ContrastiveLoss()(local_a, local_b)["loss"]
        value.backward()
        out[rank] = (value.detach(), local_a.grad / world, local_b.grad / world)  # DDP averages gradients
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_equal_one_process_on_the_global_batch():
    a, b = _pair(n=8, d=16)
    full_a, full_b = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    expected = ContrastiveLoss()(full_a, full_b)["loss"]
    expected.backward()
    out = mp.Manager().dict()
    mp.spawn(_rank_worker, args=(2, _free_port(), a, b, out), nprocs=2, join=True)
    for rank in range(2):
        torch.testing.assert_close(out[rank][0], expected.detach())
    torch.testing.assert_close(torch.cat([out[0][1], out[1][1]]), full_a.grad)
    torch.testing.assert_close(torch.cat([out[0][2], out[1][2]]), full_b.grad)
