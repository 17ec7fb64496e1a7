"""Params and FLOPs of a gated model, counted by hand."""

from __future__ import annotations

import torch

from dgmerge.gating.counting import count_macs, model_cost

from .helpers import TRAINED, experts_of, gated_model


def test_params_and_flops_by_hand():
    """tiny_cnn micro (8, 16, 32, 32 channels, 3×3 convs, 2×2 pools) on 16 px, 2 experts, blocks.3 gated."""
    backbone, theta0, experts = experts_of(n=2)
    model, _, gated = gated_model(backbone, theta0, experts, m=1, gate_norms=False)
    chosen = gated[0]
    x = torch.randn(1, 3, 16, 16)
    # Convs: out pixels × out channels × in channels × 9 (pad 1, so a block keeps size; the pool halves it).
    encoder = 8 * 256 * 3 * 9 + 16 * 64 * 8 * 9 + 32 * 16 * 16 * 9 + 32 * 4 * 32 * 9
    assert encoder == 239_616
    assert count_macs(theta0.encoder, x) == encoder
    block = {"blocks.2": (32 * 16 * 9, 64), "blocks.3": (32 * 32 * 9, 64)}  # conv weights, BN weight+bias
    gated_params = sum(block[chosen])
    gated_elements = gated_params + 64  # BN running mean and var are mixed too
    total = 216 + 16 + 1152 + 32 + 4608 + 64 + 9216 + 64
    cost = model_cost(model, theta0.encoder, x, TRAINED)
    gate_own = 4608 + 64 + 9216 + 64 + (32 * 2 + 2)
    assert cost["params"] == (total - gated_params) + 2 * gated_params + 2 * (32 * 3 + 3) + gate_own
    assert cost["flops"] == encoder + 32 * 3 + (32 * 16 * 16 * 9 + 32 * 4 * 32 * 9) + 32 * 2 + 2 * gated_elements
    plain = model_cost(model, theta0.encoder, x, TRAINED, with_gate=False)
    assert plain["flops"] == encoder + 32 * 3
