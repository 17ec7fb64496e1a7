import warnings

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
    out = merge("lwptv", pre, fts, eta=0.05, threshold="absolute")  # base task_arithmetic, λ = 1
    torch.testing.assert_close(out["blocks.0.w"], t(3.3, 4.4))  # only model 1's update survives
    torch.testing.assert_close(out["blocks.1.w"], t(6.6, 8.8))  # only model 2's
    torch.testing.assert_close(out["cls"], t(1.0))  # τ = +1 and -1, both kept
    assert out.info["masks"] == {"blocks.0": [1, 0], "blocks.1": [0, 1], "cls": [1, 1]}
    assert out.info["name"] == "LwPTV-style (reconstructed)"


def test_all_pruned_layer_keeps_pretrained_in_both_modes():
    pre, fts = models()
    for mode in ("before", "after"):
        out = merge("lwptv", pre, fts, eta=0.5, threshold="absolute", mode=mode, base="task_arithmetic",
                    scale=0.5)
        torch.testing.assert_close(out["blocks.0.w"], pre["blocks.0.w"])
        torch.testing.assert_close(out["blocks.1.w"], pre["blocks.1.w"])
        torch.testing.assert_close(out["cls"], pre["cls"])  # relative saliency 1 ≥ 0.5: kept, τ sum 0
        assert out.info["pruned_units"] == ["blocks.0", "blocks.1"]
        # cls is kept (its τ just sums to 0), so this is not the everything-pruned case
        assert (out.info["n_kept"], out.info["n_pruned"], out.info["all_pruned"]) == (1, 2, False)


def test_share_saliency_tensor_units_and_prune_above():
    pre, fts = models()
    out = merge("lwptv", pre, fts, eta=0.5, threshold="absolute", saliency="share", unit="tensor")
    # shares in blocks.0: 0.5/0.55 and 0.05/0.55
    assert out.info["scores"]["blocks.0.w"] == pytest.approx([0.5 / 0.55, 0.05 / 0.55])
    assert out.info["masks"]["blocks.0.w"] == [1, 0]
    above = merge("lwptv", pre, fts, eta=0.5, threshold="absolute", saliency="share", prune="above")
    assert above.info["masks"]["blocks.0"] == [0, 1]


def test_eta_zero_equals_the_base_method():
    pre, fts = models()
    for base, extra in (("ties", {"keep": 0.5}), ("rhm", {"trim": 0.5})):
        plain = merge(base, pre, fts, **extra)
        for threshold in ("fraction", "absolute"):
            masked = merge("lwptv", pre, fts, eta=0.0, threshold=threshold, base=base, **extra)
            for key in pre:
                torch.testing.assert_close(masked[key], plain[key])


def test_fraction_threshold_prunes_each_tasks_lowest_layers_by_hand():
    pre, fts = models()
    # 3 changed layers per task; η = 0.34 -> ⌊1.02⌋ = 1 pruned per task: model 1's lowest is
    # blocks.1 (0.01), model 2's is blocks.0 (0.01) — the same masks as absolute η = 0.05
    out = merge("lwptv", pre, fts, eta=0.34)
    assert out.info["masks"] == {"blocks.0": [1, 0], "blocks.1": [0, 1], "cls": [1, 1]}
    torch.testing.assert_close(out["blocks.0.w"], t(3.3, 4.4))
    torch.testing.assert_close(out["blocks.1.w"], t(6.6, 8.8))
    assert out.info["pruned_per_task"] == [1, 1] and out.info["pruned_units"] == []
    assert (out.info["n_units"], out.info["n_kept"], out.info["n_pruned"]) == (3, 3, 0)
    # η = 0.67 -> ⌊2.01⌋ = 2 per task: both blocks go for both models, cls (1.0) stays
    out = merge("lwptv", pre, fts, eta=0.67)
    assert out.info["masks"] == {"blocks.0": [0, 0], "blocks.1": [0, 0], "cls": [1, 1]}
    assert out.info["pruned_units"] == ["blocks.0", "blocks.1"] and out.info["n_kept"] == 1
    # prune="above": each model drops its highest layer, cls (1.0 > 0.1)
    above = merge("lwptv", pre, fts, eta=0.34, prune="above")
    assert above.info["masks"] == {"blocks.0": [1, 1], "blocks.1": [1, 1], "cls": [0, 0]}
    assert above.info["pruned_units"] == ["cls"]


def test_fraction_eta_above_one_is_rejected():
    pre, fts = models()
    with pytest.raises(MergeError, match="in \\[0, 1\\]"):
        merge("lwptv", pre, fts, eta=1.5)
    with pytest.raises(MergeError, match="threshold"):
        merge("lwptv", pre, fts, eta=0.1, threshold="relative")
    with pytest.warns(RuntimeWarning):  # a saliency value may exceed 1 (here it prunes everything)
        merge("lwptv", pre, fts, eta=1.5, threshold="absolute")


def test_layers_no_task_changed_are_not_counted():
    pre, fts = models()
    pre["frozen.w"] = t(5.0, 5.0)
    for f in fts:
        f["frozen.w"] = t(5.0, 5.0)
    out = merge("lwptv", pre, fts, eta=0.05, threshold="absolute")  # frozen scores 0 < η, but no-op
    assert out.info["pruned_units"] == [] and out.info["n_unchanged"] == 1 and out.info["n_units"] == 3
    out = merge("lwptv", pre, fts, eta=0.34)  # 1 of 3 changed layers per task, as without frozen.w
    assert out.info["pruned_per_task"] == [1, 1]


def mobilenet_like(rel: dict[str, float]) -> tuple[dict, list[dict]]:
    """θ0 with MobileNetV2 tensor kinds (1×1 convs, a depthwise 3×3, BN) and 3 models
    θ_t = θ0·(1 + r_t·c_u): unit u's relative saliency is exactly r_t·c_u."""
    gen = torch.Generator().manual_seed(0)
    shapes = {"blocks.5.0.conv_pw.weight": (12, 4, 1, 1), "blocks.5.0.conv_dw.weight": (12, 1, 3, 3),
              "blocks.5.0.bn1.weight": (12,), "blocks.5.0.bn1.bias": (12,),
              "blocks.6.0.conv_pwl.weight": (8, 12, 1, 1), "blocks.6.0.bn3.bias": (8,),
              "conv_head.weight": (16, 8, 1, 1), "bn2.weight": (16,), "bn2.bias": (16,)}
    pre = {k: torch.randn(s, generator=gen, dtype=torch.float64) for k, s in shapes.items()}
    unit = {k: k.split(".0.")[0] if k.startswith("blocks") else k for k in shapes}
    fts = [{k: v * (1 + r * rel[unit[k]]) for k, v in pre.items()} for r in (1.0, 1.1, 0.9)]
    return pre, fts


def test_mobilenet_like_reproduction_absolute_eta_prunes_everything_and_warns():
    # Relative updates as measured on PACS/MobileNetV2 (100 steps, lr 1e-4): 5e-4 .. 5e-3
    rel = {"blocks.5": 0.002, "blocks.6": 0.003, "conv_head.weight": 0.005, "bn2.weight": 0.0006,
           "bn2.bias": 0.0005}
    pre, fts = mobilenet_like(rel)
    with pytest.warns(RuntimeWarning, match="every one of the 5 changed layer"):
        out = merge("lwptv", pre, fts, eta=0.05, threshold="absolute", base="ties", keep=0.2)
    assert out.info["scores"]["blocks.5"] == pytest.approx([0.002, 0.0022, 0.0018])
    assert out.info["all_pruned"] and out.info["n_kept"] == 0 and "θ0" in out.info["warning"]
    for key in pre:
        assert torch.equal(out[key], pre[key])
    # Scale-free: η = 0.2 of 5 layers -> 1 per task, the lowest (bn2.bias); 0.5 -> ⌊2.5⌋ = 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = merge("lwptv", pre, fts, eta=0.2, base="task_arithmetic", scale=1 / 3)
    assert out.info["pruned_units"] == ["bn2.bias"] and out.info["pruned_per_task"] == [1, 1, 1]
    assert (out.info["n_kept"], out.info["n_pruned"], out.info["all_pruned"]) == (4, 1, False)
    # kept layers: θ0 + mean τ = θ0·(1 + c_u) (the r_t average to 1); pruned: θ0
    torch.testing.assert_close(out["conv_head.weight"], pre["conv_head.weight"] * 1.005)
    torch.testing.assert_close(out["blocks.5.0.conv_dw.weight"], pre["blocks.5.0.conv_dw.weight"] * 1.002)
    torch.testing.assert_close(out["bn2.bias"], pre["bn2.bias"])
    out = merge("lwptv", pre, fts, eta=0.5)
    assert out.info["pruned_units"] == ["bn2.weight", "bn2.bias"]
    with pytest.warns(RuntimeWarning):
        assert merge("lwptv", pre, fts, eta=1.0).info["all_pruned"]


def test_a_mask_that_prunes_nothing_says_why_and_equals_its_base():
    # The bench's trainable suffix: blocks.6, conv_head, bn2's weight and bias (blocks.5 frozen).
    rel = {"blocks.5": 0.0, "blocks.6": 0.003, "conv_head.weight": 0.005, "bn2.weight": 0.0006, "bn2.bias": 0.0005}
    pre, fts = mobilenet_like(rel)
    with pytest.warns(RuntimeWarning, match=r"at most 4 layer unit\(s\) \(unit='block'\) and floor\(eta·4\) = 0; "
                                            r"use unit='tensor' or an eta of at least 0.25"):
        out = merge("lwptv", pre, fts, eta=0.2, base="ties", keep=0.2)
    assert out.info["none_pruned"] and out.info["pruned_per_task"] == [0, 0, 0]
    plain = merge("ties", pre, fts, keep=0.2)
    assert all(torch.equal(out[k], plain[k]) for k in pre)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the advice holds: η = 0.25 prunes one layer per task
        assert merge("lwptv", pre, fts, eta=0.25).info["pruned_per_task"] == [1, 1, 1]
        merge("lwptv", pre, fts, eta=0.0)  # η = 0 asks for no pruning: nothing to warn about
    with pytest.warns(RuntimeWarning, match=r"no saliency \('relative'\) is on the pruned side of eta; "
                                            r"scores range \[0.00045, 0.0055\]"):
        merge("lwptv", pre, fts, eta=1e-4, threshold="absolute")


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
