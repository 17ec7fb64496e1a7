import pytest
import torch

from dgmerge.merging import merge, task_vectors

from .helpers import finetune, t, vit_like


def test_ties_by_hand():
    pre = {"w": t(1.0, 1.0, 1.0, 1.0)}
    # τ1 = [3, -1, 2, 0.5], τ2 = [-1, -2, 4, 0.1]
    fts = [{"w": pre["w"] + t(3.0, -1.0, 2.0, 0.5)}, {"w": pre["w"] + t(-1.0, -2.0, 4.0, 0.1)}]
    # keep 0.5 of 4 entries: σ = 2nd smallest |τ| = 1 for both, keep |τ| ≥ 1:
    #   τ1' = [3, -1, 2, 0], τ2' = [-1, -2, 4, 0]; sums [2, -3, 6, 0] -> signs [+, -, +, (+)]
    #   disjoint mean [3, (-1-2)/2, (2+4)/2, 0] = [3, -1.5, 3, 0]; λ = 2
    out = merge("ties", pre, fts, keep=0.5, scale=2.0)
    assert out["w"].tolist() == [7.0, -2.0, 7.0, 1.0]
    assert [th["value"] for th in out.info["thresholds"]] == [1.0, 1.0]


def test_model_level_and_tensor_level_thresholds_differ_by_hand():
    pre = {"a": t(0.0, 0.0), "b": t(0.0, 0.0)}
    fts = [{"a": t(4.0, 1.0), "b": t(0.5, 2.0)}]
    # model level: |τ| = [4, 1, 0.5, 2], keep 2 of 4 -> σ = 1: b[0] = 0.5 is dropped
    model = merge("ties", pre, fts, keep=0.5)
    assert model["a"].tolist() == [4.0, 1.0] and model["b"].tolist() == [0.0, 2.0]
    # tensor level: keep 1 of 2 per tensor -> σ_a = 1... keeps ≥ 1 -> [4, 1]; σ_b = 0.5 -> [0.5, 2]
    tensor = merge("ties", pre, fts, keep=0.5, level="tensor")
    assert tensor["a"].tolist() == [4.0, 1.0] and tensor["b"].tolist() == [0.5, 2.0]


def test_keep_one_without_sign_conflicts_is_the_scaled_sum_or_mean():
    pre = {"w": t(1.0, -1.0, 0.0)}
    taus = [t(0.5, -2.0, 1.0), t(1.5, -1.0, 3.0), t(1.0, -3.0, 2.0)]
    fts = [{"w": pre["w"] + tau} for tau in taus]
    total = taus[0] + taus[1] + taus[2]  # [3, -6, 6]
    summed = merge("ties", pre, fts, keep=1.0, scale=0.7, aggregate="sum")
    torch.testing.assert_close(summed["w"], pre["w"] + 0.7 * total)
    mean = merge("ties", pre, fts, keep=1.0, scale=0.7)
    torch.testing.assert_close(mean["w"], pre["w"] + 0.7 * total / 3)


def test_exact_cancellation_uses_the_model_wide_majority_sign(monkeypatch):
    # entry 0 cancels (2 - 2 = 0); the other entries elect +, +, - -> majority +
    pre = {"w": t(0.0, 0.0, 0.0, 0.0)}
    fts = [{"w": t(2.0, 1.0, 1.0, -1.0)}, {"w": t(-2.0, 1.0, 1.0, -1.0)}]
    monkeypatch.setattr(task_vectors, "PIECE", 1)  # the tied entry sits alone in its piece
    out = merge("ties", pre, fts, keep=1.0)
    assert out["w"].tolist() == [2.0, 1.0, 1.0, -1.0]
    assert out.info["majority_sign"] == 1 and out.info["zero_sum_entries"] == 1


@pytest.mark.parametrize("level", ["model", "tensor"])
def test_result_does_not_depend_on_piece_size(monkeypatch, level):
    pre = vit_like(0)
    fts = [finetune(pre, i) for i in range(3)]
    whole = merge("ties", pre, fts, keep=0.3, level=level)
    monkeypatch.setattr(task_vectors, "PIECE", 50)  # many pieces, several per tensor
    pieces = merge("ties", pre, fts, keep=0.3, level=level)
    for key in pre:
        torch.testing.assert_close(whole[key], pieces[key], rtol=0, atol=0)


def test_sampled_threshold_is_close_to_exact_and_reports_error():
    pre = vit_like(0, width=16)
    fts = [finetune(pre, i) for i in range(2)]
    exact = merge("ties", pre, fts, keep=0.2)
    sampled = merge("ties", pre, fts, keep=0.2, threshold="sampled", sample_size=5000)
    for e, s in zip(exact.info["thresholds"], sampled.info["thresholds"]):
        assert s["method"] == "sampled" and s["error"] < 0.03
        assert s["value"] == pytest.approx(e["value"], rel=0.1)


@pytest.mark.parametrize("method, paper", [("ties", {"keep": 0.2, "scale": 1.0, "aggregate": "mean", "level": "model"}),
                                           ("rhm", {"trim": 0.2, "scale": 1.0, "level": "model"})])
def test_defaults_are_the_papers_settings(method, paper):
    """A merge called without hyperparameters runs the paper's (TIES: k = 0.2, disjoint mean;
    HAM's RHM: r = 0.2), on models where another k, r or aggregate would give other weights."""
    torch.manual_seed(0)
    pre = {"w": torch.randn(50), "b": torch.randn(10)}
    models = [{k: v + torch.randn_like(v) for k, v in pre.items()} for _ in range(3)]
    default, explicit = merge(method, pre, models), merge(method, pre, models, **paper)
    assert all(torch.equal(default[k], explicit[k]) for k in pre)
    assert {k: default.info[k] for k in paper} == paper
    other = merge(method, pre, models, **{**paper, ("keep" if method == "ties" else "trim"): 0.6})
    assert not torch.equal(other["w"], default["w"])
    if method == "ties":
        summed = merge(method, pre, models, **{**paper, "aggregate": "sum"})
        assert not torch.equal(summed["w"], default["w"])


def test_exact_cancellation_takes_a_negative_majority_at_its_own_position(monkeypatch):
    # Entry 1 cancels (2 - 1 - 1 = 0); the others elect -, -, +, - : majority - (balance -3).
    # Its value is the negative candidates' aggregate: sum -2, disjoint mean -1. With one-entry
    # pieces the tied entry sits in piece 1, so its position must be offset by the piece's start.
    pre = {"w": t(0.0, 0.0, 0.0, 0.0, 0.0)}
    taus = [t(-1.0, 2.0, -1.0, 1.0, -1.0), t(-1.0, -1.0, -1.0, 1.0, -1.0), t(-1.0, -1.0, -1.0, 1.0, -1.0)]
    fts = [{"w": tau} for tau in taus]
    monkeypatch.setattr(task_vectors, "PIECE", 1)
    summed = merge("ties", pre, fts, keep=1.0, aggregate="sum")
    assert summed["w"].tolist() == [-3.0, -2.0, -3.0, 3.0, -3.0]
    assert summed.info["majority_sign"] == -1 and summed.info["zero_sum_entries"] == 1
    assert merge("ties", pre, fts, keep=1.0)["w"].tolist() == [-1.0, -1.0, -1.0, 1.0, -1.0]
    # The balance is a count over all entries: one negative majority (balance -1) is enough.
    fts = [{"w": t(2.0, -1.0)}, {"w": t(-2.0, -1.0)}]
    assert merge("ties", {"w": t(0.0, 0.0)}, fts, keep=1.0)["w"].tolist() == [-2.0, -1.0]


def test_an_even_balance_of_signs_takes_the_positive_majority():
    # Entry 0 cancels (-2 + 1 + 1); the others elect + and -: balance 0, and the reference takes +:
    # the positive candidates' aggregate, sum 2 or disjoint mean 1.
    fts = [{"w": t(-2.0, 1.0, -1.0)}, {"w": t(1.0, 1.0, -1.0)}, {"w": t(1.0, 1.0, -1.0)}]
    out = merge("ties", {"w": t(0.0, 0.0, 0.0)}, fts, keep=1.0)
    assert out["w"].tolist() == [1.0, 1.0, -1.0] and out.info["majority_sign"] == 1
    assert merge("ties", {"w": t(0.0, 0.0, 0.0)}, fts, keep=1.0, aggregate="sum")["w"].tolist() == [2.0, 3.0, -3.0]

