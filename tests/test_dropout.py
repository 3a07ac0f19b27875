"""CheapMaskDropout: torch's dropout (rate, scaling, eval, gradient, seeding), with masks drawn in bulk."""

import pytest
import torch
from torch import nn

from oneencoder import OneEncoder
from oneencoder.dropout import CheapMaskDropout
from oneencoder.projection import UniversalProjection
from conftest import tiny_model_config

P = 0.1


def masks(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return CheapMaskDropout(P).train()(torch.ones(shape))


def test_drops_at_the_rate_in_every_lane_of_a_draw_and_scales_the_rest() -> None:
    out = masks((4096, 1024), seed=0)
    dropped = out == 0
    # Four numbers come from each 64-bit draw: each lane on its own must drop at p (a lane read with
    # its sign bit would drop about half). 2^22 elements: the rate's standard error is 0.0003 per lane.
    per_lane = dropped.view(-1, 4).float().mean(0)
    assert torch.allclose(per_lane, torch.full((4,), P), atol=0.003), per_lane
    assert torch.equal(out[~dropped], torch.full_like(out[~dropped], 1 / (1 - P)))
    assert out.mean().item() == pytest.approx(1.0, abs=0.005)


def test_masks_follow_the_seed() -> None:
    assert torch.equal(masks((64, 100), seed=1), masks((64, 100), seed=1))
    assert not torch.equal(masks((64, 100), seed=1), masks((64, 100), seed=2))


def test_gradient_is_the_forward_mask_and_bf16_stays_bf16() -> None:
    inputs = torch.randn(32, 50, requires_grad=True)
    out = CheapMaskDropout(P).train()(inputs)
    out.sum().backward()
    kept = out != 0
    assert torch.equal(inputs.grad, kept.float() / (1 - P))
    assert CheapMaskDropout(P).train()(torch.ones(8, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_eval_and_zero_rate_are_the_identity() -> None:
    inputs = torch.randn(16, 16)
    assert CheapMaskDropout(P).eval()(inputs) is inputs
    assert CheapMaskDropout(0.0).train()(inputs) is inputs


def test_the_model_trains_with_it_and_keeps_torch_state_dict_keys() -> None:
    # Only the frozen encoders (not trained, run in eval) may keep torch's own dropout.
    model = OneEncoder(tiny_model_config())
    trained = [module for name, module in model.named_modules() if not name.startswith("encoders")]
    assert any(isinstance(m, CheapMaskDropout) for m in trained)
    assert not any(type(m) is nn.Dropout for m in trained)
    projection = UniversalProjection(16, 2, 2, 32, P)
    layers = list(projection.encoder.layers)
    assert all(isinstance(getattr(layer, name), CheapMaskDropout) and getattr(layer, name).p == P
               for layer in layers for name in ("dropout", "dropout1", "dropout2"))
    torch_layer = nn.TransformerEncoderLayer(16, 2, 32, P, batch_first=True)
    assert set(layers[0].state_dict()) == set(torch_layer.state_dict())
