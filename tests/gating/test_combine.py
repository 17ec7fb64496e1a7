"""The combined merge: candidate blocks, least-similar selection, m = 0 as the plain merge."""

from __future__ import annotations

import copy

import pytest
import torch

from dgmerge.gating.combine import (
    candidate_modules,
    least_similar,
)
from dgmerge.merging.statistics import collect_gram

from .helpers import experts_of, gated_model, trained_names


def test_candidates_and_selection_pick_the_least_similar_blocks():
    backbone, theta0, _ = experts_of()
    cands = candidate_modules(theta0.encoder, backbone.blocks, backbone.tail, trained_names(theta0.encoder))
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


@pytest.mark.parametrize("base", ["average", "regmean"])
def test_m0_is_the_plain_merge_plus_head_selection(base):
    backbone, theta0, experts = experts_of(n=2)
    grams = None
    if base == "regmean":
        batches = [torch.randn(8, 3, 16, 16) for _ in range(2)]
        keys = [f"encoder.{n}" for n in trained_names(theta0.encoder)]
        # tiny_cnn has only 3×3 convs: no Gram matrices, so RegMean averages them.
        grams = [collect_gram(theta0.encoder, batches, prefix="encoder.", conv1x1=True, keys=set(keys)) for _ in experts]
        assert grams == [{}, {}]
    model, merged, gated = gated_model(backbone, theta0, experts, m=0, base=base, grams=grams)
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
