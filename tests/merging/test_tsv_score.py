import statistics

import pytest
import torch

from dgmerge.merging import MergeError, merge
from dgmerge.merging.score import trim_projection

from .helpers import t


def diag_models():
    pre = {"w": torch.zeros(2, 2, dtype=torch.float64), "b": t(0.0, 0.0)}
    fts = [{"w": t([[3.0, 0.0], [0.0, 1.0]]), "b": t(1.0, 2.0)},
           {"w": t([[1.0, 0.0], [0.0, 2.0]]), "b": t(3.0, 4.0)}]
    return pre, fts


def test_tsv_keeps_each_tasks_leading_direction_by_hand():
    pre, fts = diag_models()
    # k = ⌊2/2⌋ = 1: task 1 contributes 3·e1e1ᵀ, task 2 contributes 2·e2e2ᵀ; Û = V̂ = I up to signs
    out = merge("tsv", pre, fts)
    torch.testing.assert_close(out["w"], t([[3.0, 0.0], [0.0, 2.0]]))
    assert out["b"].tolist() == [2.0, 3.0]  # not a matrix: mean


def test_score_variants_on_the_diagonal_example_by_hand():
    pre, fts = diag_models()
    # U* = V* = diag(±1, ±1), M_i = ΔW_i (diagonal); off-diagonals are 0 and all kept
    for variant in ("v1", "v2", "v4"):
        torch.testing.assert_close(merge("score", pre, fts, variant=variant)["w"], t([[4.0, 0.0], [0.0, 3.0]]))
    torch.testing.assert_close(merge("score", pre, fts, variant="v3")["w"], torch.zeros(2, 2, dtype=torch.float64))
    # upstream v4 adds 1 to every entry of each M_i: Σ = diag(4, 3) + 2; off-diagonal signs follow the basis
    bug = merge("score", pre, fts, variant="v4-upstream")["w"]
    assert bug.diagonal().tolist() == pytest.approx([6.0, 5.0])
    assert bug[0, 1].abs().item() == pytest.approx(2.0) and bug[1, 0].abs().item() == pytest.approx(2.0)


def test_score_trim_by_hand():
    m = t([[1.0, 0.1, 5.0], [0.2, 2.0, -0.1], [0.0, 0.3, 3.0]])
    off = [0.0, 0.1, 5.0, 0.2, 0.0, -0.1, 0.0, 0.3, 0.0]  # diagonal zeroed, all 9 entries
    mu, sd = statistics.fmean(off), statistics.stdev(off)  # sd ≈ 1.65, τ = 1.96·sd ≈ 3.23 (T = 1)
    assert abs(5.0 - mu) > 1.96 * sd and all(abs(v - mu) <= 1.96 * sd for v in off if v != 5.0)
    torch.testing.assert_close(trim_projection(m, 1), t([[1.0, 0.1, 0.0], [0.2, 2.0, -0.1], [0.0, 0.3, 3.0]]))
    # T = 2 halves τ to ≈ 1.62: still only the 5 goes
    torch.testing.assert_close(trim_projection(m, 2, "v3"), t([[0.0, 0.1, 0.0], [0.2, 0.0, -0.1], [0.0, 0.3, 0.0]]))
    torch.testing.assert_close(trim_projection(m, 2, "v2"), torch.diag(t(1.0, 2.0, 3.0)))
    torch.testing.assert_close(trim_projection(m, 2, "v4-upstream"), torch.diag(t(1.0, 2.0, 3.0)) + 1)


def test_intended_v4_on_square_matrices_is_the_sum_of_task_vectors():
    gen = torch.Generator().manual_seed(0)
    pre = {"w": torch.randn(6, 6, generator=gen, dtype=torch.float64)}
    fts = [{"w": pre["w"] + torch.randn(6, 6, generator=gen, dtype=torch.float64)} for _ in range(3)]
    out = merge("score", pre, fts, variant="v4")
    expected = pre["w"] + sum(f["w"] - pre["w"] for f in fts)
    torch.testing.assert_close(out["w"], expected)
    v1 = merge("score", pre, fts)  # the trim removes something
    assert not torch.allclose(v1["w"], expected)


def test_single_model_is_reconstructed_exactly():
    gen = torch.Generator().manual_seed(1)
    pre = {"w": torch.randn(5, 3, generator=gen, dtype=torch.float64)}
    fts = [{"w": pre["w"] + torch.randn(5, 3, generator=gen, dtype=torch.float64)}]
    for method in ("tsv", "score"):
        torch.testing.assert_close(merge(method, pre, fts)["w"], fts[0]["w"])


def test_text_projection_and_too_small_matrices_are_averaged():
    pre = {"text_projection": torch.zeros(2, 2), "w": torch.zeros(2, 1)}
    fts = [{"text_projection": torch.eye(2) * i, "w": torch.ones(2, 1) * i} for i in (1, 2, 3)]
    for method in ("tsv", "score"):
        out = merge(method, pre, fts)
        torch.testing.assert_close(out["text_projection"], torch.eye(2) * 2)
        torch.testing.assert_close(out["w"], torch.ones(2, 1) * 2)  # r = 1 < T = 3
        assert out.info["fallback_mean"] == ["w"]


def test_score_conv1x1_matrix_rule_by_hand():
    pre, fts = diag_models()
    conv = {"w": pre["w"].reshape(2, 2, 1, 1)}
    conv_fts = [{"w": f["w"].reshape(2, 2, 1, 1)} for f in fts]
    out = merge("score", conv, conv_fts)  # as the 2-D example above: Σ of the diagonals
    torch.testing.assert_close(out["w"], t([[4.0, 0.0], [0.0, 3.0]]).reshape(2, 2, 1, 1))
    assert out.info["matrix_rule"] == ["w"] and out.info["conv1x1_matrix"] == ["w"]
    mean = merge("score", conv, conv_fts, conv1x1="mean")  # the old behaviour: mean task vector
    torch.testing.assert_close(mean["w"], t([[2.0, 0.0], [0.0, 1.5]]).reshape(2, 2, 1, 1))
    assert mean.info["matrix_rule"] == [] and mean.info["conv1x1_matrix"] == []


def test_score_conv1x1_equals_the_same_linear_weight_exactly():
    gen = torch.Generator().manual_seed(2)
    shapes = {"pw": (6, 4), "dw": (6, 1, 3, 3), "bn": (6,)}
    pre = {k: torch.randn(s, generator=gen) for k, s in shapes.items()}
    fts = [{k: v + 0.01 * torch.randn(v.shape, generator=gen) for k, v in pre.items()} for _ in range(3)]

    def as_conv(state):
        return {k: v.reshape(6, 4, 1, 1) if k == "pw" else v for k, v in state.items()}

    linear = merge("score", pre, fts)
    conv = merge("score", as_conv(pre), [as_conv(f) for f in fts])
    assert torch.equal(conv["pw"].reshape(6, 4), linear["pw"])
    assert conv.info["conv1x1_matrix"] == ["pw"] and linear.info["conv1x1_matrix"] == []
    assert conv.info["matrix_rule"] == linear.info["matrix_rule"] == ["pw"]
    mean = merge("score", as_conv(pre), [as_conv(f) for f in fts], conv1x1="mean")
    average = merge("average", as_conv(pre), [as_conv(f) for f in fts])
    for key in shapes:  # depthwise 3×3 and BN: averaged under both settings
        torch.testing.assert_close(mean[key], average[key])
        if key != "pw":
            assert torch.equal(conv[key], mean[key])
    assert not torch.allclose(conv["pw"], mean["pw"])


def test_score_conv1x1_option_is_validated():
    pre, fts = diag_models()
    with pytest.raises(MergeError, match="conv1x1"):
        merge("score", pre, fts, conv1x1="svd")
