"""Gating merge on a tiny CNN: gate probabilities, one-hot = expert, m = 0 = plain merge, costs by hand."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dgmerge.config import BackboneConfig
from dgmerge.gating.combine import (
    base_merge,
    build_gated,
    candidate_modules,
    candidate_similarities,
    collect_pointwise_gram,
    gated_module_names,
    least_similar,
    regmean_cnn,
)
from dgmerge.gating.counting import count_macs, model_cost
from dgmerge.gating.gate import Gate, gate_fraction, new_gate, train_gate
from dgmerge.models import load_backbone
from dgmerge.models.classifier import Classifier
from dgmerge.models.heads import LinearHead
from dgmerge.models.stages import Cut

TRAINED = ["blocks.2", "blocks.3"]


def _experts(n: int = 2, classes: int = 3):
    """θ0 (tiny_cnn micro) and n experts whose blocks.2/3 and heads were perturbed differently."""
    backbone = load_backbone(BackboneConfig(kind="tiny_cnn", name="micro"))
    theta0 = Classifier(backbone.encoder, LinearHead(backbone.feature_dim, classes)).eval()
    experts = []
    for i in range(n):
        model = copy.deepcopy(theta0)
        gen = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.startswith(("encoder.blocks.2", "encoder.blocks.3", "head.")):
                    param.add_(0.3 * torch.randn(param.shape, generator=gen))
        experts.append(model)
    return backbone, theta0, experts


def _trained_names(encoder: nn.Module) -> list[str]:
    return [n for n, _ in encoder.named_parameters() if n.startswith(tuple(t + "." for t in TRAINED))]


def _gated(backbone, theta0, experts, m: int, *, gate_norms: bool = True, mode: str = "sample",
           base: str = "average", grams=None, cut: Cut | None = None):
    states = [e.state_dict() for e in experts]
    trained = _trained_names(theta0.encoder)
    cands = candidate_modules(theta0.encoder, backbone.blocks, backbone.tail, trained)
    chosen = least_similar(candidate_similarities(states, cands), m)
    gated = gated_module_names(theta0.encoder, cands, chosen, trained, gate_norms)
    keys = [f"encoder.{n}" for n in trained]
    merged = base_merge(base, theta0.state_dict(), states, keys, grams=grams)
    gate = new_gate(theta0.encoder, backbone.feature_dim, len(experts), cut, trainable=[])
    heads = [e.head for e in experts]
    model = build_gated(theta0.encoder, merged, states, gated, gate, heads,
                        [["a", "b", "c"]] * len(experts), cut=cut, mode=mode)
    return model.eval(), merged, gated


def test_candidates_and_selection_pick_the_least_similar_blocks():
    backbone, theta0, _ = _experts()
    cands = candidate_modules(theta0.encoder, backbone.blocks, backbone.tail, _trained_names(theta0.encoder))
    assert list(cands) == ["blocks.2", "blocks.3"]
    assert least_similar({"a": 0.9, "b": 0.1, "c": 0.5}, 2) == ["b", "c"]
    with pytest.raises(ValueError, match="m=3"):
        least_similar({"a": 1.0, "b": 0.0}, 3)


def test_mobilenetv2_last2_has_five_candidate_blocks():
    timm = pytest.importorskip("timm")
    encoder = timm.create_model("mobilenetv2_100", num_classes=0)
    trained = [n for n, _ in encoder.named_parameters() if n.startswith(("blocks.5.", "blocks.6.", "conv_head.", "bn2."))]
    cands = candidate_modules(encoder, [f"blocks.{i}" for i in range(7)], ["conv_head", "bn2"], trained)
    assert list(cands) == ["blocks.5.0", "blocks.5.1", "blocks.5.2", "blocks.6.0", "tail"]
    assert cands["tail"] == ["conv_head", "bn2"]


def test_gate_probabilities_sum_to_one():
    backbone, theta0, experts = _experts(n=3)
    model, _, _ = _gated(backbone, theta0, experts, m=1)
    probs = model.gate_probs(torch.randn(5, 3, 16, 16))
    assert probs.shape == (5, 3)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(5))
    assert (probs >= 0).all()


@pytest.mark.parametrize("mode", ["batch", "sample"])
def test_one_hot_gate_reproduces_each_expert(mode):
    backbone, theta0, experts = _experts(n=3)
    model, _, gated = _gated(backbone, theta0, experts, m=2, mode=mode)
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
    backbone, theta0, experts = _experts(n=2)
    model, _, _ = _gated(backbone, theta0, experts, m=2, mode="batch")
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


@pytest.mark.parametrize("base", ["average", "regmean"])
def test_m0_is_the_plain_merge_plus_head_selection(base):
    backbone, theta0, experts = _experts(n=2)
    grams = None
    if base == "regmean":
        batches = [torch.randn(8, 3, 16, 16) for _ in range(2)]
        keys = [f"encoder.{n}" for n in _trained_names(theta0.encoder)]
        # tiny_cnn has only 3×3 convs: no Gram matrices, so RegMean averages them.
        grams = [collect_pointwise_gram(theta0.encoder, batches, keys) for _ in experts]
        assert grams == [{}, {}]
    model, merged, gated = _gated(backbone, theta0, experts, m=0, base=base, grams=grams)
    assert gated == []
    plain = copy.deepcopy(theta0)
    plain.load_state_dict(merged)
    x = torch.randn(6, 3, 16, 16)
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8]] * 3)
    with torch.no_grad():
        feats = plain.encoder(x)
        out = model(x, probs=probs)
        for row, k in enumerate(probs.argmax(dim=1).tolist()):
            torch.testing.assert_close(out[row], experts[k].head(feats)[row], rtol=0, atol=1e-6)
        model.head_choice = 1
        torch.testing.assert_close(model(x, probs=probs), experts[1].head(feats), rtol=0, atol=1e-6)


def test_regmean_cnn_closed_form_on_a_pointwise_conv():
    w1, w2 = torch.randn(4, 3, 1, 1), torch.randn(4, 3, 1, 1)
    g1, g2 = torch.diag(torch.tensor([1.0, 2.0, 3.0])), torch.eye(3)
    out = regmean_cnn({"w": torch.zeros(4, 3, 1, 1)}, [{"w": w1}, {"w": w2}], [{"w": g1}, {"w": g2}], ["w"], alpha=1.0)
    # Diagonal Grams: each input column is the Gram-weighted mean of the experts' columns.
    weight = torch.tensor([1.0, 2.0, 3.0])
    want = (w1[:, :, 0, 0] * weight + w2[:, :, 0, 0]) / (weight + 1)
    torch.testing.assert_close(out["w"][:, :, 0, 0], want)
    # The Gram of a 1×1 conv counts every pixel as a row.
    conv = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False))
    x = torch.randn(2, 3, 5, 5)
    gram = collect_pointwise_gram(conv, [x], ["0.weight"], prefix="")["0.weight"]
    rows = x.permute(0, 2, 3, 1).reshape(-1, 3)
    torch.testing.assert_close(gram, rows.T @ rows / 50)


def test_params_and_flops_by_hand():
    """tiny_cnn micro (8, 16, 32, 32 channels, 3×3 convs, 2×2 pools) on 16 px, 2 experts, blocks.3 gated."""
    backbone, theta0, experts = _experts(n=2)
    model, _, gated = _gated(backbone, theta0, experts, m=1, gate_norms=False)
    chosen = gated[0]
    x = torch.randn(1, 3, 16, 16)
    # Convs: out pixels × out channels × in channels × 9 (pad 1, so a block keeps size; the pool halves it).
    encoder = 8 * 256 * 3 * 9 + 16 * 64 * 8 * 9 + 32 * 16 * 16 * 9 + 32 * 4 * 32 * 9
    assert encoder == 239_616
    assert count_macs(theta0.encoder, x) == encoder
    block = {"blocks.2": (32 * 16 * 9, 64), "blocks.3": (32 * 32 * 9, 64)}  # conv weights, BN weight+bias
    gated_params = sum(block[chosen])
    gated_elements = gated_params + 64  # BN running mean and var are mixed too
    total = 216 + 16 + 1152 + 32 + 4608 + 64 + 9216 + 64
    cost = model_cost(model, theta0.encoder, x, TRAINED)
    gate_own = 4608 + 64 + 9216 + 64 + (32 * 2 + 2)
    assert cost["params"] == (total - gated_params) + 2 * gated_params + 2 * (32 * 3 + 3) + gate_own
    assert cost["flops"] == encoder + 32 * 3 + (32 * 16 * 16 * 9 + 32 * 4 * 32 * 9) + 32 * 2 + 2 * gated_elements
    plain = model_cost(model, theta0.encoder, x, TRAINED, with_gate=False)
    assert plain["flops"] == encoder + 32 * 3


def test_gate_learns_which_task_an_input_is_from():
    backbone, theta0, _ = _experts()
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
