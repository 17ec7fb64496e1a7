import pytest
import torch

from dgmerge.merging import MergeError, merge

from .helpers import t


def models():
    pre = {"blocks.0.w": t(3.0, 4.0), "blocks.1.w": t(6.0, 8.0), "cls": t(1.0)}
    # relative saliency ‖τ‖/‖θ0‖: model 1 -> block0 0.5/5 = 0.1, block1 0.1/10 = 0.01, cls 1
    #                              model 2 -> block0 0.05/5 = 0.01, block1 1/10 = 0.1,  cls 1
    fts = [{"blocks.0.w": t(3.3, 4.4), "blocks.1.w": t(6.06, 8.08), "cls": t(2.0)},
           {"blocks.0.w": t(3.03, 4.04), "blocks.1.w": t(6.6, 8.8), "cls": t(0.0)}]
    return pre, fts


def test_lwptv_style_masks_low_saliency_layers_by_hand():
    pre, fts = models()
    out = merge("lwptv", pre, fts, eta=0.05)  # base task_arithmetic, λ = 1
    torch.testing.assert_close(out["blocks.0.w"], t(3.3, 4.4))  # only model 1's update survives
    torch.testing.assert_close(out["blocks.1.w"], t(6.6, 8.8))  # only model 2's
    torch.testing.assert_close(out["cls"], t(1.0))  # τ = +1 and -1, both kept
    assert out.info["masks"] == {"blocks.0": [1, 0], "blocks.1": [0, 1], "cls": [1, 1]}
    assert out.info["name"] == "LwPTV-style (reconstructed)"


def test_all_pruned_layer_keeps_pretrained_in_both_modes():
    pre, fts = models()
    for mode in ("before", "after"):
        out = merge("lwptv", pre, fts, eta=0.5, mode=mode, base="task_arithmetic", scale=0.5)
        torch.testing.assert_close(out["blocks.0.w"], pre["blocks.0.w"])
        torch.testing.assert_close(out["blocks.1.w"], pre["blocks.1.w"])
        torch.testing.assert_close(out["cls"], pre["cls"])  # relative saliency 1 ≥ 0.5: kept, τ sum 0
        assert out.info["pruned_units"] == ["blocks.0", "blocks.1"]


def test_share_saliency_tensor_units_and_prune_above():
    pre, fts = models()
    out = merge("lwptv", pre, fts, eta=0.5, saliency="share", unit="tensor")
    # shares in blocks.0: 0.5/0.55 and 0.05/0.55
    assert out.info["scores"]["blocks.0.w"] == pytest.approx([0.5 / 0.55, 0.05 / 0.55])
    assert out.info["masks"]["blocks.0.w"] == [1, 0]
    above = merge("lwptv", pre, fts, eta=0.5, saliency="share", prune="above")
    assert above.info["masks"]["blocks.0"] == [0, 1]


def test_eta_zero_equals_the_base_method():
    pre, fts = models()
    for base, extra in (("ties", {"keep": 0.5}), ("rhm", {"trim": 0.5})):
        plain = merge(base, pre, fts, **extra)
        masked = merge("lwptv", pre, fts, eta=0.0, base=base, **extra)
        for key in pre:
            torch.testing.assert_close(masked[key], plain[key])


def test_greedy_soup_by_hand():
    pre = {"w": t(0.0)}
    fts = [{"w": t(1.0)}, {"w": t(2.0)}, {"w": t(10.0)}]
    calls = []

    def evaluate(state):
        calls.append(float(state["w"]))
        return -abs(float(state["w"]) - 1.5)

    # scores -0.5, -0.5, -8.5 -> order 0, 1, 2; soup {0}; +1 -> w = 1.5, score 0 (added);
    # +2 -> w = 13/3, score -2.83 (rejected)
    out = merge("greedy_soup", pre, fts, evaluate=evaluate)
    assert out["w"].item() == 1.5 and out.info["ingredients"] == [0, 1]
    assert calls == [1.0, 2.0, 10.0, 1.5, pytest.approx(13 / 3)]
    calls.clear()
    out = merge("greedy_soup", pre, fts, evaluate=evaluate, scores=[0.0, 0.1, 0.2])
    assert out.info["ingredients"][0] == 2 and calls[0] == pytest.approx(6.0)  # starts from the best score


def test_greedy_soup_strict_and_score_count():
    pre = {"w": t(0.0)}
    fts = [{"w": t(1.0)}, {"w": t(1.0)}]
    assert merge("greedy_soup", pre, fts, evaluate=lambda s: 1.0).info["ingredients"] == [0, 1]
    assert merge("greedy_soup", pre, fts, evaluate=lambda s: 1.0, strict=True).info["ingredients"] == [0]
    with pytest.raises(MergeError, match="1 scores for 2 models"):
        merge("greedy_soup", pre, fts, evaluate=lambda s: 1.0, scores=[1.0])
