"""The CPU demo backbone."""

from __future__ import annotations


import pytest
import torch
from PIL import Image

from dgmerge.config import BackboneConfig
from dgmerge.files import ModelFileError, save_state_dict
from dgmerge.models import load_backbone, trainable_encoder_names


def test_tiny_cnn_shapes_structure_and_transform():
    backbone = load_backbone(BackboneConfig(kind="tiny_cnn", name="tiny"))
    assert (backbone.feature_dim, backbone.image_size) == (64, 64)
    assert backbone.blocks == ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]
    assert backbone.text_head is None
    image = backbone.eval_transform(Image.new("L", (80, 70), color=128))  # grey converted to RGB
    assert image.shape == (3, 64, 64)
    features = backbone.encode(torch.randn(5, 3, 64, 64))
    assert features.shape == (5, 64) and torch.isfinite(features).all()


def test_tiny_cnn_default_init_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = load_backbone(BackboneConfig(kind="tiny_cnn", name="tiny")).encoder.state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(999)
    second = load_backbone(BackboneConfig(kind="tiny_cnn", name="tiny")).encoder.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = load_backbone(BackboneConfig(kind="tiny_cnn", name="tiny", model_kwargs={"seed": 1})).encoder
    assert not torch.equal(other.state_dict()["blocks.0.0.weight"], first["blocks.0.0.weight"])


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_tiny_cnn_loads_its_saved_state(tmp_path, suffix):
    source = load_backbone(BackboneConfig(kind="tiny_cnn", name="tiny", model_kwargs={"seed": 7})).encoder
    path = save_state_dict(tmp_path / f"tiny{suffix}", source)
    loaded = load_backbone(BackboneConfig(kind="tiny_cnn", name="tiny", checkpoint=path)).encoder
    images = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(loaded.eval()(images), source.eval()(images))


def test_tiny_cnn_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_backbone(BackboneConfig(kind="tiny_cnn", name="tiny", checkpoint=tmp_path / "missing.safetensors"))
    micro = load_backbone(BackboneConfig(kind="tiny_cnn", name="micro")).encoder
    path = save_state_dict(tmp_path / "micro.safetensors", micro)
    with pytest.raises(ModelFileError, match="micro.safetensors.*shape mismatches"):
        load_backbone(BackboneConfig(kind="tiny_cnn", name="tiny", checkpoint=path))
    with pytest.raises(ValueError, match="unknown tiny_cnn width"):
        load_backbone(BackboneConfig(kind="tiny_cnn", name="huge"))


def test_tiny_cnn_last_n_trains_the_last_blocks_only():
    backbone = load_backbone(BackboneConfig(kind="tiny_cnn", name="tiny"))
    names = trainable_encoder_names(backbone.encoder, backbone, "last:2")
    assert names and all(n.startswith(("blocks.2.", "blocks.3.")) for n in names)
    assert {n.split(".")[1] for n in names} == {"2", "3"}


def test_tiny_cnn_stays_small_enough_for_cpu_demos():
    # Size, not wall time, is what keeps the demo interactive (timed tests flake on shared cores).
    encoder = load_backbone(BackboneConfig(kind="tiny_cnn", name="tiny")).encoder.train()
    assert sum(p.numel() for p in encoder.parameters()) < 100_000
    images = torch.randn(64, 3, 64, 64)
    encoder(images).sum().backward()
    assert all(p.grad is not None for p in encoder.parameters() if p.requires_grad)
