"""The gate: probabilities over the tasks, trained on task identity only."""

from __future__ import annotations

import pytest
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


def test_gate_fraction_is_a_seeded_ceiling_share_in_the_tasks_order():
    """The gate's data (Ye et al.: at most 15% of a task): ⌈fraction·n⌉ distinct samples, at
    least one, kept in the task's own order; the seed picks which, and only the seed.

    Sizes by hand: 0.15·n = 0.15, 0.45, 1.05, 3.0, 15.0 → 1, 1, 2, 3, 15 (a floor or a round
    would give 0 → 1, 0 → 1, 1, 3, 15, and a test on n = 100 alone could not tell them apart)."""
    for n, k in [(1, 1), (3, 1), (7, 2), (20, 3), (100, 15)]:
        samples = [(f"img{i:03d}.png", i % 4) for i in range(n)]
        chosen = gate_fraction(samples, 0.15, seed=0)
        assert len(chosen) == k, n
        positions = [samples.index(s) for s in chosen]  # every pick is one of the samples themselves
        assert positions == sorted(set(positions)), n  # distinct, in the task's order
    every = list(range(10))
    assert gate_fraction(every, 1.0, seed=3) == every
    # The seed decides: the same seed gives the same subset, others give others, all of size 15.
    picks = [tuple(gate_fraction(list(range(100)), 0.15, seed=s)) for s in range(4)]
    assert picks[0] == tuple(gate_fraction(list(range(100)), 0.15, seed=0))
    assert len(set(picks)) == 4
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            gate_fraction(every, bad, seed=0)
