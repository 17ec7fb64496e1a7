"""Gate and Gram files: what a gating run writes and `dgmerge merge --method gating` reads back."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from dgmerge.config import BackboneConfig
from dgmerge.files import ModelFileError, save_model
from dgmerge.gating.artifacts import load_gate, load_grams, save_gate, save_grams
from dgmerge.gating.gate import new_gate
from dgmerge.models import load_backbone
from dgmerge.models.classifier import Classifier
from dgmerge.models.heads import LinearHead
from dgmerge.models.stages import Cut

CFG = BackboneConfig(kind="tiny_cnn", name="micro", image_size=16)


@pytest.mark.parametrize("cut", [None, Cut("blocks.2", 16)], ids=["images", "cut-blocks.2"])
def test_gate_round_trip_gives_the_hand_computed_probabilities(tmp_path, cut, tiny_cnn_by_hand):
    """A gate written by save_gate and read by load_gate computes P(x) = softmax(linear(encoder(x)))
    with the weights it was saved with, not with the backbone's θ0 it is rebuilt on.

    The gate is moved away from θ0 first (every encoder tensor, BN statistics included, and the
    linear layer), as training moves it; otherwise a loader that kept the skeleton's freshly built
    encoder would compute the same numbers. The reference is a hand-written forward pass over the
    file's raw tensors, sharing no code with Gate, load_gate or the tiny_cnn module; for a cut gate
    the inputs are the cut block's input activations, so a loader that dropped the cut (and ran
    the whole encoder) fails too."""
    backbone = load_backbone(CFG)
    gate = new_gate(backbone.encoder, backbone.feature_dim, 3, cut, trainable=[], seed=1)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, tensor in gate.state_dict().items():
            if name.endswith("running_var"):
                tensor.mul_(1 + torch.rand(tensor.shape, generator=gen))
            elif tensor.is_floating_point():
                tensor.add_(0.3 * torch.randn(tensor.shape, generator=gen))
    save_gate(tmp_path / "gate.safetensors", gate, CFG, ["a", "b", "c"], 0.15)
    loaded, meta = load_gate(tmp_path / "gate.safetensors")
    assert meta["tasks"] == ["a", "b", "c"] and meta["fraction"] == 0.15
    assert meta["cut"] == (cut.block if cut else None) and loaded.cut == cut
    raw = load_file(tmp_path / "gate.safetensors")
    assert all(torch.equal(raw[k], v) for k, v in gate.state_dict().items())  # the moved weights were written

    first_block = 0 if cut is None else 2
    # A cut gate sees blocks.2's input: 16 channels at 4×4 for 16 px images (two 2×2 pools).
    x = torch.randn(6, 3, 16, 16) if cut is None else torch.randn(6, 16, 4, 4)
    with torch.no_grad():
        want = tiny_cnn_by_hand(raw, x, "linear", first_block)
        logits = loaded(x)
        fresh = new_gate(load_backbone(CFG).encoder, backbone.feature_dim, 3, cut, trainable=[], seed=1).eval()(x)
    torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(fresh, want, atol=1e-3)  # θ0's gate would not pass the check above
    probs = torch.softmax(logits, dim=1)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(6))
    assert ((probs >= 0) & (probs <= 1)).all()
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def test_a_model_file_is_not_a_gate(tmp_path):
    backbone = load_backbone(CFG)
    path = save_model(tmp_path / "m.safetensors", Classifier(backbone.encoder, LinearHead(backbone.feature_dim, 2)),
                      {"backbone": CFG.model_dump(mode="json"), "classes": ["a", "b"]})
    with pytest.raises(ValueError, match="not a gate file"):
        load_gate(path)


def test_grams_round_trip_and_a_missing_file_is_named(tmp_path):
    grams = {"encoder.x.weight": torch.eye(3), "encoder.y.weight": 2 * torch.eye(2)}
    save_grams(tmp_path / "g.safetensors", grams, "photo")
    loaded = load_grams(tmp_path / "g.safetensors")
    assert set(loaded) == set(grams) and torch.equal(loaded["encoder.y.weight"], grams["encoder.y.weight"])
    with pytest.raises(ModelFileError, match="nope.safetensors"):
        load_grams(tmp_path / "nope.safetensors")
