"""The gate: probabilities over the tasks, trained on task identity only."""

from __future__ import annotations

import torch

from dgmerge.gating.gate import Gate, gate_fraction, new_gate, train_gate

from .helpers import experts_of, gated_model


def test_gate_probabilities_sum_to_one():
    backbone, theta0, experts = experts_of(n=3)
    model, _, _ = gated_model(backbone, theta0, experts, m=1)
    probs = model.gate_probs(torch.randn(5, 3, 16, 16))
    assert probs.shape == (5, 3)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(5))
    assert (probs >= 0).all()


def test_gate_learns_which_task_an_input_is_from():
    backbone, theta0, _ = experts_of()
    trainable = [n for n, _ in theta0.encoder.named_parameters() if n.startswith("blocks.3.")]
    gate = new_gate(theta0.encoder, backbone.feature_dim, 2, None, trainable)
    gen = torch.Generator().manual_seed(0)
    bright = [(torch.rand(3, 16, 16, generator=gen) + 1.0, 0) for _ in range(32)]
    dark = [(torch.rand(3, 16, 16, generator=gen) - 1.0, 5) for _ in range(32)]
    train_gate(gate, [bright, dark], steps=30, batch_size=8, lr=1e-2)
    with torch.no_grad():
        pred = gate(torch.stack([x for x, _ in bright[:8] + dark[:8]])).argmax(dim=1)
    assert pred.tolist() == [0] * 8 + [1] * 8
    assert isinstance(gate, Gate) and not any(p.requires_grad for p in gate.parameters())
    assert len(gate_fraction(list(range(100)), 0.15, seed=0)) == 15
    assert gate_fraction(list(range(100)), 0.15, seed=0) == gate_fraction(list(range(100)), 0.15, seed=0)
