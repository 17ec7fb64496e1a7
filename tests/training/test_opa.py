import pytest
import torch

from dgmerge.training.opa import (mean_update, mean_update_and_conflicts, sign_conflict_rate, sign_loss,
                                  update_vector)

THETA0 = [torch.tensor([1.0, 1.0, 1.0]), torch.tensor([[2.0, -2.0]])]
V_I = [torch.tensor([1.0, -2.0, 3.0]), torch.tensor([[0.5, -1.0]])]
V_BAR = [torch.tensor([2.0, 1.0, -1.0]), torch.tensor([[1.0, 1.0]])]


def params():
    return [(p0 + v).requires_grad_(True) for p0, v in zip(THETA0, V_I)]


def test_update_vector_and_mean_update():
    p = params()
    updates = update_vector(p, THETA0)
    assert [u.tolist() for u in updates] == [v.tolist() for v in V_I]
    assert not any(u.requires_grad for u in updates)
    other = [torch.tensor([3.0, 4.0, -5.0]), torch.tensor([[1.5, 3.0]])]
    mean = mean_update([updates, other])
    assert [m.tolist() for m in mean] == [v.tolist() for v in V_BAR]


def test_elementwise_sign_loss_value_and_gradient_by_hand():
    p = params()
    loss = sign_loss(p, THETA0, V_BAR, "elementwise")
    # layer 1: −v⊙v̄ = [−2, 2, 3] → 5; layer 2: [−0.5, 1] → 1; mean over the 2 layers = 3.
    assert loss.item() == pytest.approx(3.0)
    loss.backward()
    # −v̄ / N_L where the hinge is active, 0 elsewhere.
    assert p[0].grad.tolist() == pytest.approx([0.0, -0.5, 0.5])
    assert p[1].grad.tolist() == [pytest.approx([0.0, -0.5])]


def test_dot_sign_loss_value_and_gradient_by_hand():
    p = params()
    loss = sign_loss(p, THETA0, V_BAR, "dot")
    # layer 1: ⟨v, v̄⟩ = 2 − 2 − 3 = −3 → 3; layer 2: 0.5 − 1 = −0.5 → 0.5; mean = 1.75.
    assert loss.item() == pytest.approx(1.75)
    loss.backward()
    assert p[0].grad.tolist() == pytest.approx([-1.0, -0.5, 0.5])
    assert p[1].grad.tolist() == [pytest.approx([-0.5, -0.5])]


def test_dot_layer_that_agrees_gets_no_gradient():
    p = [(THETA0[0] + V_BAR[0]).requires_grad_(True)]
    loss = sign_loss(p, THETA0[:1], V_BAR[:1], "dot")
    assert loss.item() == 0.0
    loss.backward()
    assert p[0].grad.abs().sum().item() == 0.0


def test_mean_is_a_constant_and_zero_updates_cost_nothing():
    mean = [v.clone().requires_grad_(True) for v in V_BAR]
    p = [t.clone().requires_grad_(True) for t in THETA0]  # v_i = 0: at θ0
    loss = sign_loss(p, THETA0, mean)
    assert loss.item() == 0.0
    loss = sign_loss(params(), THETA0, mean)
    loss.backward()
    assert all(m.grad is None for m in mean)


def test_sign_conflict_rate_counts_strictly_opposite_signs():
    # products: [2, −2, −3], [0.5, −1] → 3 of 5 elements conflict.
    assert sign_conflict_rate(V_I, V_BAR) == pytest.approx(0.6)
    zeros = [torch.zeros(3), torch.zeros(1, 2)]
    assert sign_conflict_rate(zeros, V_BAR) == 0.0


def test_streamed_mean_and_conflicts_equal_the_plain_functions():
    g = torch.Generator().manual_seed(0)
    theta0 = [torch.randn(5, generator=g), torch.randn(2, 3, generator=g)]
    models = [[t + torch.randn(t.shape, generator=g) for t in theta0] for _ in range(3)]
    mean, rates = mean_update_and_conflicts(models, theta0)
    updates = [update_vector(m, theta0) for m in models]
    expected = mean_update(updates)
    assert all(torch.equal(a, b) for a, b in zip(mean, expected))
    assert rates == [sign_conflict_rate(u, expected) for u in updates]
    assert 0 < max(rates) < 1


def test_bad_inputs():
    with pytest.raises(ValueError, match="mode"):
        sign_loss(params(), THETA0, V_BAR, "cosine")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^sign_loss needs at least one trainable tensor$"):
        sign_loss([], [], [])
    with pytest.raises(ValueError, match=r"^mean_update_and_conflicts needs at least one model$"):
        mean_update_and_conflicts([], THETA0)
    with pytest.raises(ValueError, match=r"^mean_update needs at least one model's update vector$"):
        mean_update([])


def test_sign_conflict_rate_with_zeros_in_the_mean():
    # v̄ = 0 where the models cancel exactly: u·m = 0 there, never a conflict (a ratio u/m would be
    # −inf for u < 0 and count one). Products: [0, 2, 0, −3] → 1 conflict of 4.
    update = [torch.tensor([-1.0, 2.0]), torch.tensor([[3.0, 1.0]])]
    mean = [torch.tensor([0.0, 1.0]), torch.tensor([[0.0, -3.0]])]
    assert sign_conflict_rate(update, mean) == pytest.approx(0.25)


def test_sign_conflict_rate_refuses_mismatched_lengths():
    # A v̄ with fewer tensors than v_i (or more) is a caller's bug, not a rate over a prefix.
    with pytest.raises(ValueError, match="zip"):
        sign_conflict_rate(V_I, V_BAR[:1])
    with pytest.raises(ValueError, match="zip"):
        sign_conflict_rate(V_I[:1], V_BAR)


def test_sign_conflict_rate_of_no_elements_is_zero():
    # Nothing to compare: no conflicts (not a division by zero, not 100 %).
    assert sign_conflict_rate([], []) == 0.0
    assert sign_conflict_rate([torch.zeros(0)], [torch.zeros(0)]) == 0.0


def test_sign_loss_refuses_mismatched_lengths():
    # θ0 or v̄ with fewer tensors than the model is a caller's bug: a loss over a prefix of the
    # layers would silently leave the rest unaligned (and divide by the wrong N_L).
    with pytest.raises(ValueError, match="zip"):
        sign_loss(params(), THETA0[:1], V_BAR)
    with pytest.raises(ValueError, match="zip"):
        sign_loss(params(), THETA0, V_BAR[:1])


def test_streamed_conflicts_by_hand_with_exact_cancellations():
    # Three models over two tensors (θ0 = 0 and 1). Updates:
    #   layer 1: A [1, −1, 0, 2], B [−1, 1, 0, 4], C [0, 0, 0, −3] → v̄ = [0, 0, 0, 1]
    #   layer 2: A [1, −1],       B [1, 1],        C [1, 0]        → v̄ = [1, 0]
    # Products with v̄: A [0, 0, 0, 2 | 1, 0], B [0, 0, 0, 4 | 1, 0], C [0, 0, 0, −3 | 1, 0]:
    # only C's last layer-1 element conflicts; zeros (from v̄ = 0 or v_i = 0) never do.
    theta0 = [torch.zeros(4), torch.ones(1, 2)]
    a = [torch.tensor([1.0, -1.0, 0.0, 2.0]), torch.tensor([[2.0, 0.0]])]
    b = [torch.tensor([-1.0, 1.0, 0.0, 4.0]), torch.tensor([[2.0, 2.0]])]
    c = [torch.tensor([0.0, 0.0, 0.0, -3.0]), torch.tensor([[2.0, 1.0]])]
    mean, rates = mean_update_and_conflicts([a, b, c], theta0)
    assert mean[0].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert mean[1].tolist() == [[1.0, 0.0]]
    assert rates == [0.0, 0.0, pytest.approx(1 / 6)]


def test_streamed_conflicts_of_no_elements_are_zero():
    assert mean_update_and_conflicts([[torch.zeros(0)], [torch.zeros(0)]], [torch.zeros(0)])[1] == [0.0, 0.0]
    assert mean_update_and_conflicts([[]], []) == ([], [0.0])
