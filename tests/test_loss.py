import math
import os
import socket

import pytest
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


def test_learnable_scale_matches_reference_and_learns_at_the_cap():
    a, b = _pair()
    loss = ContrastiveLoss.clip()
    assert loss.log_logit_scale.requires_grad
    torch.testing.assert_close(loss(a, b)["loss"], reference_infonce(a, b, 1 / 0.07))
    with torch.no_grad():
        loss.log_logit_scale.fill_(10.0)
    loss.clamp_()
    assert loss.log_logit_scale.item() == pytest.approx(math.log(100.0))
    torch.testing.assert_close(loss(a, b)["loss"], reference_infonce(a, b, 100.0))
    loss(a, b)["loss"].backward()  # a clamp in the forward pass gave no gradient here
    assert loss.log_logit_scale.grad is not None and loss.log_logit_scale.grad != 0


def test_under_bf16_autocast_the_logits_and_their_gradients_stay_fp32():
    a, b = _pair(n=64, d=256)
    loss = ContrastiveLoss(log_logit_scale=math.log(50.0), learnable_scale=True)  # a scale the demo learns
    exact_a = a.clone().requires_grad_()
    loss(exact_a, b)["loss"].backward()
    mixed_a = a.clone().requires_grad_()
    with torch.autocast("cpu", torch.bfloat16):
        mixed = loss(mixed_a, b)["loss"]
    mixed.backward()
    # bf16 logits (a cosine rounded to 1/512, times 50) put the loss about 1e-3 off
    torch.testing.assert_close(mixed, reference_infonce(a, b, 50.0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed_a.grad, exact_a.grad, atol=1e-6, rtol=1e-5)


def test_fixed_scale_above_the_cap_is_refused():
    with pytest.raises(ValueError, match=r"log_logit_scale 5.0 gives a scale of 148.4, above max_logit_scale 100"):
        ContrastiveLoss(log_logit_scale=5.0)


def test_identical_pairs_give_lower_loss_than_shuffled():
    a, _ = _pair(n=16, d=32)
    loss = ContrastiveLoss()
    assert loss(a, a)["loss"] < loss(a, a[torch.randperm(16)])["loss"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Rows each process brings, per case: equal batches, unequal ones (records skipped), one process
# with none (every record of its batch skipped), and none anywhere.
ROW_BOUNDS = [((0, 4), (4, 8)), ((0, 3), (3, 8)), ((0, 0), (0, 5)), ((0, 0), (0, 0))]


def _rank_worker(rank, world, port, a, b, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for case, bounds in enumerate(ROW_BOUNDS):
            rows = slice(*bounds[rank])
            local_a = a[rows].clone().requires_grad_(True)
            local_b = b[rows].clone().requires_grad_(True)
            loss = ContrastiveLoss.clip()
            value = loss(local_a, local_b)["loss"]
            value.backward()
            grads = (local_a.grad, local_b.grad, loss.log_logit_scale.grad)
            out[case, rank] = (value.detach(), *(g / world for g in grads))  # DDP averages gradients
    finally:
        dist.destroy_process_group()


def _one_process(a, b):
    full_a, full_b = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    loss = ContrastiveLoss.clip()
    value = loss(full_a, full_b)["loss"]
    value.backward()
    return value.detach(), full_a.grad, full_b.grad, loss.log_logit_scale.grad


def test_ddp_two_processes_equal_one_process_on_the_global_batch_whatever_size_each_brings():
    a, b = _pair(n=8, d=16)
    out = mp.Manager().dict()
    mp.spawn(_rank_worker, args=(2, _free_port(), a, b, out), nprocs=2, join=True)
    for case, bounds in enumerate(ROW_BOUNDS):
        total = bounds[-1][1]
        value, grad_a, grad_b, grad_scale = _one_process(a[:total], b[:total])
        for rank in range(2):
            torch.testing.assert_close(out[case, rank][0], value)
        torch.testing.assert_close(torch.cat([out[case, 0][1], out[case, 1][1]]), grad_a)
        torch.testing.assert_close(torch.cat([out[case, 0][2], out[case, 1][2]]), grad_b)
        torch.testing.assert_close(out[case, 0][3] + out[case, 1][3], grad_scale)
    assert out[3, 0][0] == 0  # no rows anywhere: a zero loss, and backward still ran on both
