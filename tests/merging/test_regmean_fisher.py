import pytest
import torch
from torch import nn

from dgmerge.merging import MergeError, collect_fisher, collect_gram, merge

from .helpers import t


def test_regmean_single_input_is_gram_weighted_average():
    pre = {"w": t([[0.0], [0.0]]), "b": t(0.0, 0.0)}
    fts = [{"w": t([[2.0], [4.0]]), "b": t(1.0, 1.0)}, {"w": t([[6.0], [0.0]]), "b": t(3.0, 5.0)}]
    out = merge("regmean", pre, fts, grams=[{"w": t([[1.0]])}, {"w": t([[3.0]])}])
    assert out["w"].tolist() == [[5.0], [1.0]]  # (1·W1 + 3·W2) / 4
    assert out["b"].tolist() == [2.0, 3.0]  # no Gram: averaged
    assert out.info["regmean_keys"] == ["w"]


def test_regmean_alpha_zero_uses_only_the_gram_diagonal():
    pre = {"w": t([[0.0, 0.0]])}
    fts = [{"w": t([[1.0, 2.0]])}, {"w": t([[5.0, 6.0]])}]
    grams = [{"w": t([[1.0, 5.0], [5.0, 4.0]])}, {"w": t([[3.0, 2.0], [2.0, 4.0]])}]
    # column 0: (1·1 + 3·5)/4 = 4; column 1: (4·2 + 4·6)/8 = 4
    torch.testing.assert_close(merge("regmean", pre, fts, grams=grams, alpha=0.0)["w"], t([[4.0, 4.0]]))


def test_regmean_full_solve_by_hand():
    pre = {"w": t([[0.0, 0.0]])}
    fts = [{"w": t([[1.0, 0.0]])}, {"w": t([[0.0, 1.0]])}]
    grams = [{"w": t([[2.0, 1.0], [1.0, 1.0]])}, {"w": t([[1.0, 0.0], [0.0, 1.0]])}]
    # α = 1: [[3, 1], [1, 2]] x = [2, 2] -> x = [0.4, 0.8]
    torch.testing.assert_close(merge("regmean", pre, fts, grams=grams, alpha=1.0)["w"], t([[0.4, 0.8]]))
    # α = 0.9: [[3, .9], [.9, 2]] x = [2, 1.9] -> x = [2.29, 3.9] / 5.19
    torch.testing.assert_close(merge("regmean", pre, fts, grams=grams, alpha=0.9)["w"],
                               t([[2.29 / 5.19, 3.9 / 5.19]]))


def test_collect_gram_by_hand_and_for_attention():
    lin = nn.Sequential(nn.Linear(2, 3))
    grams = collect_gram(lin, [(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([0, 1]))], prefix="visual.")
    torch.testing.assert_close(grams["visual.0.weight"], torch.tensor([[5.0, 7.0], [7.0, 10.0]]))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(4, 2, batch_first=True)

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0]

    x = torch.randn(1, 3, 4)
    grams = collect_gram(Block(), [x])
    torch.testing.assert_close(grams["attn.in_proj_weight"], x[0].T @ x[0] / 3)
    assert "attn.out_proj.weight" not in grams  # called functionally inside MultiheadAttention


def test_regmean_on_collected_grams_solves_the_joint_least_squares():
    torch.manual_seed(0)
    xs = [torch.randn(50, 3), torch.randn(50, 3) * 2]
    models = [nn.Linear(3, 2, bias=False) for _ in range(2)]
    grams = [collect_gram(m, [x]) for m, x in zip(models, xs)]
    states = [{k: v.double() for k, v in m.state_dict().items()} for m in models]
    merged = merge("regmean", {"weight": torch.zeros(2, 3, dtype=torch.float64)}, states,
                   grams=[{k: v.double() for k, v in g.items()} for g in grams], alpha=1.0)
    # min_W Σ_i ‖X_i Wᵀ − X_i W_iᵀ‖², solved independently with lstsq
    x_all = torch.cat(xs).double()
    y_all = torch.cat([x.double() @ s["weight"].T for x, s in zip(xs, states)])
    expected = torch.linalg.lstsq(x_all, y_all).solution.T
    torch.testing.assert_close(merged["weight"], expected, rtol=1e-5, atol=1e-4)


def test_regmean_errors():
    pre = {"w": t([[0.0, 0.0]])}
    with pytest.raises(MergeError, match="1 Gram dicts for 2 models"):
        merge("regmean", pre, [pre, pre], grams=[{"w": torch.eye(2)}])
    with pytest.raises(MergeError, match="no Gram key matches"):
        merge("regmean", pre, [pre], grams=[{"x.weight": torch.eye(2)}])
    with pytest.raises(MergeError, match=r"Gram of 'w' has shape \(3, 3\), expected \(2, 2\)"):
        merge("regmean", pre, [pre], grams=[{"w": torch.eye(3)}])


def test_fisher_by_hand():
    pre = {"w": t(0.0, 0.0), "b": t(0.0)}
    fts = [{"w": t(0.0, 0.0), "b": t(1.0)}, {"w": t(4.0, 4.0), "b": t(3.0)}]
    fishers = [{"w": t(1.0, 3.0)}, {"w": t(3.0, 1.0)}]
    out = merge("fisher", pre, fts, fishers=fishers, eps=0.0)
    assert out["w"].tolist() == [3.0, 1.0]  # [(0·1 + 4·3)/4, (0·3 + 4·1)/4]
    assert out["b"].tolist() == [2.0]  # no Fisher: averaged
    zero = merge("fisher", pre, fts, fishers=[{"w": t(0.0, 0.0)}] * 2)
    assert zero["w"].tolist() == [2.0, 2.0]  # all-zero Fisher falls back to the mean through eps


def test_collect_fisher_by_hand():
    model = nn.Linear(2, 2)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    fisher = collect_fisher(model, [(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))], labels="true")
    # p = [.5, .5]; ∂ log p_0 / ∂W = (e_0 − p) xᵀ = [[.5, 0], [−.5, 0]]; squared
    torch.testing.assert_close(fisher["weight"], torch.tensor([[0.25, 0.0], [0.25, 0.0]]))
    torch.testing.assert_close(fisher["bias"], torch.tensor([0.25, 0.25]))
    sampled = collect_fisher(model, [torch.randn(4, 2)], labels="model")
    assert all((v >= 0).all() for v in sampled.values())
    with pytest.raises(ValueError, match="no labels"):
        collect_fisher(model, [torch.randn(2, 2)], labels="true")


def test_regmean_solves_pointwise_convs_as_matrices():
    from dgmerge.merging import merge
    from dgmerge.merging.statistics import collect_gram

    w1, w2 = torch.randn(4, 3, 1, 1), torch.randn(4, 3, 1, 1)
    g1, g2 = torch.diag(torch.tensor([1.0, 2.0, 3.0])), torch.eye(3)
    theta0 = {"w": torch.zeros(4, 3, 1, 1)}
    out = merge("regmean", theta0, [{"w": w1}, {"w": w2}], grams=[{"w": g1}, {"w": g2}], alpha=1.0)
    # Diagonal Grams: each input column is the Gram-weighted mean of the models' columns.
    weight = torch.tensor([1.0, 2.0, 3.0])
    want = (w1[:, :, 0, 0] * weight + w2[:, :, 0, 0]) / (weight + 1)
    torch.testing.assert_close(out["w"][:, :, 0, 0], want)
    assert out["w"].shape == (4, 3, 1, 1)
    # conv1x1="mean" ignores those Grams and averages.
    with pytest.raises(Exception, match="no Gram key"):
        merge("regmean", theta0, [{"w": w1}, {"w": w2}], grams=[{"w": g1}, {"w": g2}], conv1x1="mean")
    # The Gram of a 1×1 conv counts every pixel as a row; 3×3 convs get none.
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1, bias=False), torch.nn.Conv2d(4, 4, 3))
    x = torch.randn(2, 3, 5, 5)
    grams = collect_gram(conv, [x], conv1x1=True)
    rows = x.permute(0, 2, 3, 1).reshape(-1, 3)
    assert set(grams) == {"0.weight"}
    torch.testing.assert_close(grams["0.weight"], rows.T @ rows / 50)
    assert collect_gram(conv, [x]) == {}
    # keys= restricts the hooks; forward= runs the model another way (here: only its first layer).
    assert collect_gram(conv, [x], conv1x1=True, keys={"1.weight"}) == {}
    first = collect_gram(conv, [x], conv1x1=True, forward=lambda inp: conv[0](inp))
    torch.testing.assert_close(first["0.weight"], grams["0.weight"])
