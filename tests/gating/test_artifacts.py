"""Gate and Gram files: what a gating run writes and `dgmerge merge --method gating` reads back."""

from __future__ import annotations

import pytest
import torch

from dgmerge.config import BackboneConfig
from dgmerge.files import ModelFileError, save_model
from dgmerge.gating.artifacts import load_gate, load_grams, save_gate, save_grams
from dgmerge.gating.gate import new_gate
from dgmerge.models import load_backbone
from dgmerge.models.classifier import Classifier
from dgmerge.models.heads import LinearHead

CFG = BackboneConfig(kind="tiny_cnn", name="micro", image_size=16)


def test_gate_round_trip_gives_the_same_probabilities(tmp_path):
    backbone = load_backbone(CFG)
    gate = new_gate(backbone.encoder, backbone.feature_dim, 3, None, trainable=[], seed=1)
    save_gate(tmp_path / "gate.safetensors", gate, CFG, ["a", "b", "c"], 0.15)
    loaded, meta = load_gate(tmp_path / "gate.safetensors")
    assert meta["tasks"] == ["a", "b", "c"] and meta["cut"] is None and meta["fraction"] == 0.15
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), gate.eval()(x))


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
