"""Per-input weight mixing: one-hot gates reproduce each expert, soft gates mix weights."""

from __future__ import annotations

import copy

import pytest
import torch

from .helpers import experts_of, gated_model


@pytest.mark.parametrize("mode", ["batch", "sample"])
def test_one_hot_gate_reproduces_each_expert(mode):
    backbone, theta0, experts = experts_of(n=3)
    model, _, gated = gated_model(backbone, theta0, experts, m=2, mode=mode)
    assert set(gated) >= {"blocks.2", "blocks.3"}
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        for k, expert in enumerate(experts):
            onehot = torch.zeros(4, 3)
            onehot[:, k] = 1.0
            got, want = model(x, probs=onehot), expert(x)
            if mode == "batch":
                assert torch.equal(got, want)
            else:  # vmap's per-sample convolutions may sum in another order
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_soft_gate_mixes_weights_not_outputs():
    backbone, theta0, experts = experts_of(n=2)
    model, _, _ = gated_model(backbone, theta0, experts, m=2, mode="batch")
    probs = torch.tensor([[0.25, 0.75]])
    mixed = copy.deepcopy(experts[0])
    with torch.no_grad():
        for (name, p), q in zip(mixed.state_dict().items(), experts[1].state_dict().values()):
            if name.startswith(("encoder.blocks.2", "encoder.blocks.3")) and p.is_floating_point():
                p.copy_(0.25 * p + 0.75 * q)
    mixed.head = experts[1].head  # argmax P picks expert 1's classifier
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x, probs=probs), mixed(x), rtol=1e-5, atol=1e-6)
