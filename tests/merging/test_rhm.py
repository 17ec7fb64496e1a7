import pytest
import torch

from dgmerge.merging import merge, task_vectors

from .helpers import finetune, t, vit_like


def test_rhm_by_hand_has_no_sign_election():
    pre = {"w": t(0.0, 0.0, 0.0, 0.0, 0.0)}
    fts = [{"w": t(3.0, -1.0, 2.0, 0.5, 5.0)}, {"w": t(-1.0, -2.0, 4.0, 0.1, -6.0)}]
    # r = 0.4 of n = 5 -> k = 2: σ1 = 2nd smallest of [3, 1, 2, .5, 5] = 1, σ2 = 2nd of [1, 2, 4, .1, 6] = 1
    # keep |v| > 1: m1 = [1, 0, 1, 0, 1], m2 = [0, 1, 1, 0, 1]
    # masked mean: [3/1, -2/1, (2+4)/2, 0 (nobody), (5-6)/2] — TIES would elect '-' for the last entry
    out = merge("rhm", pre, fts, trim=0.4)
    assert out["w"].tolist() == [3.0, -2.0, 3.0, 0.0, -0.5]
    assert [th["value"] for th in out.info["thresholds"]] == [1.0, 1.0]
    assert merge("ties", pre, fts, keep=0.6)["w"].tolist()[4] == -6.0


def test_trim_zero_is_the_plain_mean_of_task_vectors():
    pre = {"w": t(1.0, 1.0, 1.0)}
    fts = [{"w": t(2.0, 1.0, 0.0)}, {"w": t(1.0, 1.0, 4.0)}]  # τ = [1, 0, -1], [0, 0, 3]
    assert merge("rhm", pre, fts, trim=0.0)["w"].tolist() == [1.5, 1.0, 2.0]
    pre, fts = vit_like(0), [finetune(vit_like(0), i) for i in range(3)]
    out = merge("rhm", pre, fts, trim=0.0)
    for key, base in pre.items():
        if base.is_floating_point():
            torch.testing.assert_close(out[key], (fts[0][key] + fts[1][key] + fts[2][key] - 3 * base) / 3 + base)


def test_layer_level_trims_each_tensor_on_its_own():
    pre = {"a": t(0.0, 0.0), "b": t(0.0, 0.0)}
    fts = [{"a": t(4.0, 1.0), "b": t(0.5, 2.0)}]
    # model level, r = 0.25 of 4 -> k = 1: σ = 0.5, keep > 0.5
    model = merge("rhm", pre, fts, trim=0.25)
    assert model["a"].tolist() == [4.0, 1.0] and model["b"].tolist() == [0.0, 2.0]
    # layer level, k = max(1, ⌊0.25·2⌋) = 1 per tensor: σ_a = 1, σ_b = 0.5
    layer = merge("rhm", pre, fts, trim=0.25, level="tensor")
    assert layer["a"].tolist() == [4.0, 0.0] and layer["b"].tolist() == [0.0, 2.0]


def test_scale_multiplies_the_merged_update():
    pre = {"w": t(1.0, 1.0)}
    fts = [{"w": t(3.0, 1.0)}]
    assert merge("rhm", pre, fts, trim=0.0, scale=0.5)["w"].tolist() == [2.0, 1.0]


def test_sampled_estimate_reports_the_measured_error(monkeypatch):
    pre = vit_like(1, width=16)
    fts = [finetune(pre, i) for i in range(3)]
    exact = merge("rhm", pre, fts, trim=0.2)
    monkeypatch.setattr(task_vectors, "PIECE", 100)
    sampled = merge("rhm", pre, fts, trim=0.2, threshold="sampled", sample_size=3000, seed=1)
    n = sum(v.numel() for v in pre.values() if v.is_floating_point())
    for i, (e, s) in enumerate(zip(exact.info["thresholds"], sampled.info["thresholds"])):
        magnitudes = torch.cat([(fts[i][k] - v).abs().reshape(-1) for k, v in pre.items() if v.is_floating_point()])
        assert s["realized_fraction"] == pytest.approx(float((magnitudes <= s["value"]).sum()) / n)
        assert s["error"] == pytest.approx(abs(s["realized_fraction"] - s["target_fraction"]))
        assert s["error"] < s["dkw_bound"]
        assert e["value"] == pytest.approx(float(torch.kthvalue(magnitudes, int(0.2 * n)).values))
