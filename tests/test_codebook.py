"""The shared EMA codebook against hand computations on 3 codes x 2 dims, its resets, DDP sync, and TOC."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from oneencoder.codebook import CodebookConfig, SharedCodebook, toc_dimensions, toc_scores

ROOT = Path(__file__).resolve().parents[1]
CODES = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
# Rows paired across modalities; nearest codes: audio 0, 1; video 0, 2; text 0, 1.
ROWS = {
    "audio": [[0.1, 0.0], [0.9, 0.1]],
    "video": [[0.2, 0.1], [0.1, 0.8]],
    "text": [[0.0, 0.1], [1.0, 0.2]],
}


def _codebook(**overrides) -> SharedCodebook:
    config = CodebookConfig(**{"codes": 3, "dim": 2, "decay": 0.9, "epsilon": 0.1, "init": "uniform", **overrides})
    codebook = SharedCodebook(config)
    codebook.embedding.copy_(torch.tensor(CODES))
    codebook.ema_weight.copy_(torch.tensor(CODES))
    return codebook


def _features(names=("audio", "video", "text"), requires_grad=False) -> dict[str, torch.Tensor]:
    return {m: torch.tensor(ROWS[m], requires_grad=requires_grad) for m in names}


def test_cross_modal_ema_update_matches_a_hand_computation():
    codebook = _codebook()
    out = codebook(_features())
    assert {m: i.tolist() for m, i in out.indices.items()} == {"audio": [0, 1], "video": [0, 2], "text": [0, 1]}
    # Each pick adds 0.5 x its own row + 0.25 x the other two modalities' rows at the same position:
    # code 0 (audio/video/text row 0): (0.10, 0.05) + (0.125, 0.075) + (0.075, 0.075)
    # code 1 (audio row 1, text row 1): (0.725, 0.300) + (0.750, 0.325);  code 2 (video row 1): (0.525, 0.475)
    sums = torch.tensor([[0.3, 0.2], [1.475, 0.625], [0.525, 0.475]])
    count = 0.9 * 1.0 + 0.1 * torch.tensor([3.0, 2.0, 1.0])            # [1.2, 1.1, 1.0], n = 3.3
    smoothed = (count + 0.1) / (3.3 + 3 * 0.1) * 3.3                    # Laplace smoothing
    weight = 0.9 * torch.tensor(CODES) + 0.1 * sums
    torch.testing.assert_close(codebook.ema_count, smoothed)
    torch.testing.assert_close(codebook.ema_weight, weight)
    torch.testing.assert_close(codebook.embedding, weight / smoothed[:, None])
    assert codebook.unused_steps.tolist() == [0, 0, 0]


def test_two_modalities_split_a_code_two_thirds_own_one_third_other():
    codebook = _codebook(decay=0.0, epsilon=1e-12)
    codebook({"audio": torch.tensor([[0.9, 0.0]]), "video": torch.tensor([[0.3, 0.6]])})  # audio -> 1, video -> 2
    # 0.5 / 0.25 renormalised to sum to one: 2/3 own + 1/3 other, so a code stays a mean of features
    torch.testing.assert_close(codebook.embedding[1], torch.tensor([2 / 3 * 0.9 + 1 / 3 * 0.3, 1 / 3 * 0.6]))
    torch.testing.assert_close(codebook.embedding[2], torch.tensor([2 / 3 * 0.3 + 1 / 3 * 0.9, 2 / 3 * 0.6]))


def test_commitment_weights_own_twice_and_each_other_modality_half():
    features = _features(requires_grad=True)
    out = _codebook()(features)
    codes = torch.tensor(CODES)
    q = {"audio": codes[[0, 1]], "video": codes[[0, 2]], "text": codes[[0, 1]]}

    def mse(m, o):
        return ((torch.tensor(ROWS[m]) - q[o]) ** 2).mean()

    expected = 0.25 * sum(2 * mse(m, m) + 0.5 * sum(mse(m, o) for o in q if o != m) for m in q)
    torch.testing.assert_close(out.commitment, expected)
    # straight-through: forward values are the codes, the gradient reaches the features
    torch.testing.assert_close(out.quantized["video"], q["video"])
    (out.commitment + out.quantized["audio"].sum()).backward()
    assert features["audio"].grad is not None and features["audio"].grad.abs().sum() > 0


def test_code_matching_is_contrastive_over_code_distributions():
    features = {m: torch.randn(4, 3, 2, requires_grad=True) for m in ("audio", "video")}
    out = _codebook()(features)
    codes = torch.tensor(CODES)
    p = {m: F.softmax(-torch.cdist(x.detach().reshape(-1, 2), codes), 1).view(4, 3, 3).mean(1)
         for m, x in features.items()}
    s = p["audio"] @ p["video"].log().t() + p["video"] @ p["audio"].log().t()
    expected = 0.5 * -torch.stack([s[i, i] - torch.logsumexp(s[i], 0) for i in range(4)]).mean()
    torch.testing.assert_close(out.matching, expected, rtol=1e-4, atol=1e-6)
    assert out.indices["audio"].shape == (4, 3)
    out.matching.backward()
    assert features["video"].grad.abs().sum() > 0
    assert _codebook()({"audio": torch.randn(4, 2)}).matching.item() == 0.0


def test_eval_mode_changes_nothing():
    codebook = _codebook(dead_after=1).eval()
    before = {k: v.clone() for k, v in codebook.state_dict().items()}
    codebook(_features())
    for key, value in codebook.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_a_dead_code_is_reset_near_a_used_code_with_real_noise():
    torch.manual_seed(0)
    codebook = _codebook(dead_after=3, reset_noise=0.05, epsilon=1e-5)
    rows = {"audio": torch.tensor([[1.0, 0.0]]), "video": torch.tensor([[1.0, 0.05]])}  # both pick code 1
    for _ in range(2):
        codebook(rows)
    assert codebook.unused_steps.tolist() == [2, 0, 2]
    codebook(rows)  # third step unused: codes 0 and 2 copy code 1 plus noise
    source = codebook.embedding[1]
    for code in (0, 2):
        gap = (codebook.embedding[code] - source).norm()
        assert 0 < gap < 0.5, gap
        torch.testing.assert_close(codebook.embedding[code], codebook.ema_weight[code] / codebook.ema_count[code])
    assert not torch.equal(codebook.embedding[0], codebook.embedding[2])
    assert codebook.unused_steps.tolist() == [0, 0, 0]
    reset = codebook.embedding.clone()
    picked = {i for x in codebook(rows).indices.values() for i in x.tolist()}
    unpicked = {0, 2} - picked
    assert unpicked
    for code in unpicked:  # a reset code stays where it was put: its EMA buffers moved too
        torch.testing.assert_close(codebook.embedding[code], reset[code], rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="reset_noise must be > 0"):
        CodebookConfig(reset_noise=0.0)


def test_nearest_and_usage():
    codebook = _codebook()
    indices, vectors = codebook.nearest(torch.tensor([[[0.9, 0.0], [0.0, 0.7]], [[0.1, 0.1], [0.8, 0.3]]]))
    assert indices.tolist() == [[1, 2], [0, 1]] and vectors.shape == (2, 2, 2)
    torch.testing.assert_close(vectors[0, 1], torch.tensor([0.0, 1.0]))
    usage = codebook.usage(torch.tensor([0, 0, 1, 1]))
    assert usage.dead_codes == 1 and usage.perplexity == pytest.approx(2.0)
    with pytest.raises(ValueError, match="expected codebook.dim=2"):
        codebook.nearest(torch.zeros(3, 4))


def test_state_dict_round_trip():
    torch.manual_seed(1)
    trained = SharedCodebook(CodebookConfig(codes=8, dim=4, dead_after=2))
    for _ in range(4):
        trained({"audio": torch.randn(5, 4), "video": torch.randn(5, 4)})
    state = trained.state_dict()
    assert set(state) == {"embedding", "ema_count", "ema_weight", "unused_steps", "initialized"}
    loaded = SharedCodebook(CodebookConfig(codes=8, dim=4, dead_after=2))
    loaded.load_state_dict(state)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key]), key
    probe = torch.randn(6, 4)
    assert torch.equal(loaded.nearest(probe)[0], trained.nearest(probe)[0])


def test_codes_start_from_the_first_training_batch_so_features_far_from_the_origin_spread_over_them():
    torch.manual_seed(3)
    rows = 5.0 + torch.randn(64, 4)
    uniform = SharedCodebook(CodebookConfig(codes=16, dim=4, init="uniform"))
    data = SharedCodebook(CodebookConfig(codes=16, dim=4))
    for codebook in (uniform, data):
        codebook({"audio": rows[:32], "video": rows[32:]})
    assert len(uniform.nearest(rows)[0].unique()) == 1  # the release's start: one code takes everything
    assert len(data.nearest(rows)[0].unique()) > 8
    assert bool(data.initialized)
    before = data.embedding.clone()
    data.eval()({"audio": rows[:32] + 100, "video": rows[32:]})
    assert torch.equal(data.embedding, before)  # started once, and never by evaluation


def test_toc_scores_match_the_definition_and_pick_planted_dimensions():
    torch.manual_seed(2)
    small = torch.randn(5, 3)
    sim = torch.stack([sum(small[i, d] * small[j, d] for i in range(5) for j in range(5) if i != j) / 20
                       for d in range(3)])
    torch.testing.assert_close(toc_scores(small), -0.7 * sim + 0.3 * small.var(0))
    codebook = 1.0 + 0.01 * torch.randn(50, 16)   # shared offset: codes look alike there (high sim, low var)
    planted = [3, 7, 11]
    codebook[:, planted] = 2.0 * torch.randn(50, 3)  # informative: zero mean, wide spread
    assert toc_dimensions(codebook, 3) == planted
    assert toc_dimensions(codebook, 16) == list(range(16))
    with pytest.raises(ValueError, match="between 1 and the codebook dim 16"):
        toc_dimensions(codebook, 17)


# One rank: its own seed (so its own initial codes) and its own data; dead codes after 3 unused steps.
RANK_SCRIPT = """
import json, sys
import torch
import torch.distributed as dist
from oneencoder.codebook import CodebookConfig, SharedCodebook
rank, port = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
torch.manual_seed(rank)
codebook = SharedCodebook(CodebookConfig(codes=16, dim=4, dead_after=3, init="uniform"))
initial = codebook.embedding.clone() if rank == 0 else None
resets, reset = [], codebook._reset
codebook._reset = lambda dead, used: (resets.append(dead.tolist()), reset(dead, used))
steps = []
for step in range(8):
    batch = {m: torch.randn(6, 4) + rank for m in ("audio", "video")}
    codebook(batch)
    steps.append({"batch": {m: x.tolist() for m, x in batch.items()}, "embedding": codebook.embedding.tolist()})
print(json.dumps({"initial": initial.tolist() if initial is not None else None, "steps": steps, "resets": resets,
                  "state": {k: v.tolist() for k, v in codebook.state_dict().items()}}))
dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_with_different_data_hold_identical_codes_and_resets():
    port = _free_port()
    processes = [
        subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, str(rank), str(port)], cwd=ROOT, text=True,
                         stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
        for rank in range(2)
    ]
    first, second = (json.loads(process.communicate(timeout=120)[0]) for process in processes)
    assert first["state"] == second["state"]  # bit-identical buffers
    assert first["resets"] == second["resets"] and first["resets"], "expected dead-code resets on both ranks"
    assert first["steps"][0]["batch"] != second["steps"][0]["batch"]
    # the all-reduced first step equals one process seeing both ranks' rows (starting from rank 0's codes)
    single = SharedCodebook(CodebookConfig(codes=16, dim=4, dead_after=3, init="uniform"))
    single.embedding.copy_(torch.tensor(first["initial"]))
    single.ema_weight.copy_(single.embedding)
    single({m: torch.tensor(first["steps"][0]["batch"][m] + second["steps"][0]["batch"][m])
            for m in ("audio", "video")})
    torch.testing.assert_close(single.embedding, torch.tensor(first["steps"][0]["embedding"]))
